"""Gymnasium environments around learners (the PADS sampling teacher lands here)."""
