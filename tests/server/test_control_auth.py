"""The bearer check shared by the control routes."""

from server.control_auth import authorized


def test_the_right_bearer_token_is_authorized() -> None:
    assert authorized([(b"authorization", b"Bearer s3cret")], "s3cret")
    assert authorized([(b"authorization", b"bearer  s3cret ")], "s3cret")


def test_a_wrong_missing_or_repeated_token_is_refused() -> None:
    assert not authorized([(b"authorization", b"Bearer nope")], "s3cret")
    assert not authorized([(b"authorization", b"Basic s3cret")], "s3cret")
    assert not authorized([], "s3cret")
    two = [(b"authorization", b"Bearer s3cret"), (b"authorization", b"Bearer s3cret")]
    assert not authorized(two, "s3cret")


def test_no_configured_token_authorizes_nothing() -> None:
    assert not authorized([(b"authorization", b"Bearer ")], None)
    assert not authorized([(b"authorization", b"Bearer ")], "")
