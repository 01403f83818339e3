"""policy: `onnxcollide check`'s rules over audit results and baselines -> findings.

Pure: the facts of each model (``facts``), the policy in effect with where each value came
from (``config``; reading the policy TOML is the only file it opens), baselines and how a model
changed against one (``baseline``; it reads the baseline JSON), and the findings
(``evaluate``). It never prints or exits.
"""
