"""The web application and access: HTTP routes and the room page (`static/`), the events socket, the filtering
Janus proxy, join tokens, TURN credentials, /healthz and serving (TLS). May import every other part of the gateway;
nothing else in the gateway imports it."""
