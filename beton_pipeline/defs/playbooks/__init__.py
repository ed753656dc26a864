"""Playbooks: act on account scores and signal health through an outbox, and read out whether acting helped."""
