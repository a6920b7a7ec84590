"""Features without a measured benefit yet, kept out of the default paths.

* ``triton_attention``: a Triton kernel for rank-space attention; never timed
  (no GPU was available). Opt in with ``ReducedSelfAttention(use_triton=True)``
  or ``set_attention_options_(model, use_triton=True)``.
* ``elastic``: one artifact holding each layer's full PCA basis, truncated to
  the plan's ranks at load (``elastic: true``); a deployment convenience with
  no speed or accuracy gain measured in bench/RESULTS.md.
"""
