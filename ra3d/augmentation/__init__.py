"""The paper's glue between retrieval, guidance and training: the assets of a run, the asset term
and π (Eq. 10–11), ω for a run (Eq. 12) and the delta-distillation references (Eq. 13)."""
