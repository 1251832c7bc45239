"""Cluster events: published after commit, fanned out to subscribers."""
