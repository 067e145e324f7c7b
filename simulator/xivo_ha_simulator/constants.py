"""Values more than one simulator module needs, each defined here only.

The failover strings mirror the node's file format: ``mode`` and ``condition`` of
``/var/lib/xivo-ha/failover.json`` as ``xivo_ha.failover`` writes them (the
simulator reads that file through ``docker exec`` and does not import the node's
package).  Keep them in step with ``xivo_ha.failover``.
"""

DEFAULT_BOUND = 300.0  # downtime bound, seconds, real-equivalent (XiVO: 5 minutes)
DEFAULT_CALL_RATE = 60.0  # calls per phone per real hour: several per phone during a 5-minute fault
DEFAULT_REDIAL_AFTER = 30.0  # real seconds before a user dials a failed call again

# What a fault's catalog entry expects of the cluster (see faults).
OUTAGE = "outage"  # the master stops serving: every phone must be back within the bound
SERVED = "served"  # the master keeps serving: no failover, no lost registration

# failover.json "mode": what the slave is doing.
STANDBY = "standby"
SERVING = "serving"
# failover.json "condition": the slave's last verdict on the master.
MASTER_UP = "up"
# PSTN calls per phone per real hour, from the PSTN caller to the users' DIDs through the trunk
# carrier: a 200-phone run calls each phone several times during a 5-minute fault.
DEFAULT_PSTN_RATE = 60.0
DID_PREFIX = "0100"  # a user's DID: this prefix and the user's extension (demo-users.sql's incalls)
# The trunk's registration expiry (real seconds, the staticsip `register` row's ~expiry): under the
# 300 s a failover needs the carrier to follow within (the seed's trunk prerequisite).
DEFAULT_TRUNK_EXPIRY = 120
