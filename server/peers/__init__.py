"""Independent local peers for testing any Twilio <-> Deepgram Voice Agent bridge.

``caller.TwilioCaller`` plays Twilio Media Streams, ``agent.LocalAgent`` plays the Deepgram Voice
Agent API v1 and ``audio`` holds their pure-Python audio helpers. Nothing here imports the bridge.
"""
