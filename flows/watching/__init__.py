"""Watching data and traffic: the data checks before training and drift of the served traffic."""
