"""xivo-ha: high availability for XiVO telephony servers."""

__version__ = "0.1.0"
