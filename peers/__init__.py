"""Local stand-ins for the services the bridge talks to, sharing no code with the bridge.

``peers.twilio_api``: Twilio's REST Calls resource, with simulated call play-out.
"""
