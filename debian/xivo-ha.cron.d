# xivo-ha: the HA jobs of a node are paused while `xivo-ha maintenance on` is in
# force; this reminder is not.  It mails root itself, once per maintenance period
# left on for longer than [doctor] maintenance_warn_age (/etc/xivo-ha/xivo-ha.conf),
# and logs to syslog: its output is not for cron to mail as well.
17 * * * * root test -x /usr/bin/xivo-ha && /usr/bin/xivo-ha maintenance remind >/dev/null 2>&1
