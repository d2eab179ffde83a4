"""Paths the tests share (the checkout's configs, fixtures, browser tools and starter models)."""

from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
CONFIGS = REPO / "configs"
FIXTURES = TESTS / "fixtures"
BROWSER = TESTS / "browser"
STARTER_MODELS = REPO / "ra3d" / "assets" / "starter" / "models"
