"""Evaluation of trained runs: the relative CLIP view metric (Fig. 9), asset fidelity and
geometry, CLIP loading, and the reports (JSON, CSV, plots, summary)."""
