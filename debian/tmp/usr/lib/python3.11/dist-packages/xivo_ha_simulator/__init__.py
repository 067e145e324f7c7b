"""xivo-ha simulator: SIP phones, a two-node cluster and faults, to measure failover.

The phones (``phone``) speak SIP over UDP with the scapy layer of ``sip``;
``report`` turns what they logged into downtime figures and a verdict.
"""

__version__ = "0.1.0"
