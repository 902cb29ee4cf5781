"""Peer task queues and the ms07 producer, run as subprocesses by bench/compare.py.

Each peer lives in its own virtual environment (their pins clash with ms07's and with each
other's); these modules import nothing from ms07 except ``ms07_producer``.
"""
