"""The brokerage adapters (paper, alpaca) of the port in tasks/ports.py."""
