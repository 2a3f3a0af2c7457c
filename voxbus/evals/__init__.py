"""``voxbus eval``: an agent's scripted conversations through the real stages, each turn checked
(the tools called and their arguments, a handoff, the words of the reply) and timed.

- ``scenarios``: the scenario file (YAML) and the checks of one turn;
- ``runner``: the conversations on a bus (a session each, its turns as committed ``EndOfTurn``s,
  each turn's ``ReplyEnd`` collected);
- ``cli``: ``voxbus eval FILE``, which starts what it needs (an embedded nats-server, the LLM
  stage and the module's tool worker) unless ``NATS_URL`` names running stages.
"""
