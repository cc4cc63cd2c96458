"""Policies that write or supervise G-code: the language model, the expert planner, baselines.

* :mod:`agent.policy` — the :class:`~agent.policy.Policy` protocol every policy follows (prompts in, one
  text per prompt out);
* :mod:`agent.llm` — the language-model policy: prompt formatting, generation and sampling, stop tokens,
  the revise loop;
* :mod:`agent.expert` — the reference program as a policy;
* :mod:`agent.baselines` — random text, doing nothing, the rule supervisor, a Stable-Baselines3 model.
"""
