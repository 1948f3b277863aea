"""clipipe.wire: the controller's side of the agent protocol.

- ``bootstrap``: the one-line ``python3 -c`` loader and the payload (compressed agent + config literal)
- ``frames``: the frame codec (msgpack) and the protocol table imported from agent/clipipe_agent.py,
  whose module docstring is the protocol specification
- ``mux``: data channels with credit windows
- ``session``: AgentSession, one agent connection over an asyncio reader/writer pair

The Target built on these is ``clipipe.targets.agent.AgentTarget``.
"""
