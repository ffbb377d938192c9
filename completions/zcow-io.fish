complete -c zcow-io -s c -l cmd -d 'Execute a command (repeatable; commands run in order)' -r
complete -c zcow-io -s f -l format -d 'Image format (qcow2 or raw; probed when absent)' -r
complete -c zcow-io -s r -l read-only -d 'Open the image read-only'
complete -c zcow-io -s U -l force-share -d 'Open the image with no locks that exclude others (read-only only), as qemu-io -U: other processes may change it while it is read'
complete -c zcow-io -s h -l help -d 'Print help'
complete -c zcow-io -s V -l version -d 'Print version'
