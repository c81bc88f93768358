"""Local stand-ins for the services the bridge talks to, sharing no code with the bridge.

``caller.TwilioCaller`` plays Twilio Media Streams, ``agent.LocalAgent`` plays the Deepgram Voice
Agent API v1, ``twilio_api`` plays Twilio's REST Calls resource with simulated call play-out,
``load`` holds a lean caller and agent for many calls from one process (the benchmark's load),
``twilio_messages`` and ``frames`` build Twilio's messages and WebSocket frames for all of them,
and ``audio`` holds their pure-Python audio helpers. Nothing here imports ``sansio`` or ``server``.
"""
