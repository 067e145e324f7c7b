"""xivo-ha simulator: SIP phones, a two-node cluster and faults, to measure failover.

The phones (``phone``) speak SIP over UDP with the scapy layer of ``sip`` and
log ``events``; ``report`` turns what they logged into downtime figures and a
verdict; ``simulation`` runs one fault (``faults``) on the docker ``cluster``;
``cli`` parses the command line; ``constants`` holds the values they share.
"""

__version__ = "0.1.0"
