"""Helpers of every layer: the mail log, later answers, files; imports no other layer."""
