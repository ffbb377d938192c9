complete -c zcow-ublk -s f -l format -d 'Image format (probed when absent)' -r -f -a "qcow2\t''
raw\t''"
complete -c zcow-ublk -s q -l queues -d 'Hardware queues (one thread each)' -r
complete -c zcow-ublk -s d -l depth -d 'Requests in flight per queue' -r
complete -c zcow-ublk -s w -l workers -d 'Worker threads per queue for flushes, zone management and large transfers (0: the queue thread runs every request, one at a time)' -r
complete -c zcow-ublk -l id -d 'Device number N of /dev/ublkbN (default: the driver picks)' -r
complete -c zcow-ublk -s r -l read-only -d 'Serve read-only'
complete -c zcow-ublk -s h -l help -d 'Print help (see more with \'--help\')'
complete -c zcow-ublk -s V -l version -d 'Print version'
