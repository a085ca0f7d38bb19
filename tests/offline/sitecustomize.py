"""Loaded by Python at start-up when this folder is on PYTHONPATH: the network is off in this process."""
import network_guard

network_guard.install()
