complete -c zcow-io -s c -l cmd -d 'Execute a command (repeatable; commands run in order)' -r
complete -c zcow-io -s f -l format -d 'Image format (qcow2 or raw; probed when absent)' -r
complete -c zcow-io -s r -l read-only -d 'Open the image read-only'
complete -c zcow-io -s h -l help -d 'Print help'
complete -c zcow-io -s V -l version -d 'Print version'
