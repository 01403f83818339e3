"""The Null-space search: model inputs (``inputs``), the model facts a search rests on
(``context``), colliding inputs unit by unit (``search``) or from the whole conv operator
(``operator_search``), one colliding input from directions (``perturb``), and the frozen
results (``results``). Nothing here runs a model.
"""
