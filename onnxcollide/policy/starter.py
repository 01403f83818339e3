"""The commented starting policy `onnxcollide init-policy` writes (it reads as the built-in
default: a test checks that every value it sets is the default's)."""

STARTER_POLICY = '''\
# onnxcollide check policy (written by 'onnxcollide init-policy').
# 'onnxcollide check' reads it from --policy FILE, else from the nearest folder (from the
# current one up) with [tool.onnxcollide] in pyproject.toml or an onnxcollide.toml.
# The same keys go under [tool.onnxcollide] in pyproject.toml (as [tool.onnxcollide.rules] ...).
# Every value below is the built-in default; change what your models need.

[settings]
# The audit settings the rules' numbers are decided with. A baseline must have been made
# with the same conv-convention, rtol and atol.
conv-convention = "grouped"   # "grouped" (the operator's rank) or "paper" (Table 1 as printed)
# rtol = 1e-6                 # rank tolerance: rtol * sigma_max (default max(q, p) * eps)
# atol = 0.0                  # absolute tolerance floor
seed = 0                      # the w1-validated check's random input
device = "auto"               # its ONNX Runtime device: "auto", "cpu" or "cuda"

[rules]
# Each rule: "error" fails the check (exit 1), "warning" is reported, "off" is not checked.
# Metric rules fail when the value is above max (counts: an integer >= 0; ratios: in [0, 1)).

# W1 admits exact collisions of the whole input: W1 is dense or a patchify conv with
# nullity(W1) >= 1, or input elements are read by no conv window.
w1-collision = "error"
# Stronger: one colliding input is made and proven in ONNX Runtime (needs onnxcollide[cpu]).
w1-validated = "off"

# Table 1 metrics above a bound.
nullity_w1 = { severity = "off", max = 0 }
nu_ratio = { severity = "off", max = 0 }       # share of weights with nullity >= 1
mu_ratio = { severity = "off", max = 0 }       # share of weights with p < q
nullity_sum = { severity = "off", max = 0 }
unclear = { severity = "warning", max = 0 }    # rank decisions too close to call
skipped_weights = { severity = "warning", max = 0 }  # weights the audit does not analyse

# Against a baseline (--baseline FILE, --baseline-dir DIR; write them with --update-baseline).
baseline-rank = "error"        # a layer's rank fell or its nullity grew
baseline-new-layer = "error"   # a new layer with nullity >= 1
baseline-metrics = "warning"   # nu, mu, their ratios, the nullity sum or nullity(W1) grew
baseline-missing = "warning"   # baselines were given, but none for this model

# Per layer: nullity above max for layers whose node, weight or initializer name matches.
# [[rules.layer-nullity]]
# match = "*classifier*"
# max = 0
# severity = "error"

# Accepted findings: an entry names a model glob, a layer glob or both, optionally the rules
# it covers, and always the reason, which every report shows.
# [[allow]]
# model = "models/legacy_*.onnx"
# layer = "*patch_embed*"
# rules = ["w1-collision"]
# reason = "patch embedding reviewed in SEC-123: inputs are validated upstream"
'''
