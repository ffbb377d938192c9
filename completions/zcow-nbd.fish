complete -c zcow-nbd -s p -l port -d 'TCP port to listen on' -r
complete -c zcow-nbd -s b -l bind -d 'Address to listen on. Default 127.0.0.1 (loopback only, unlike qemu-nbd which binds 0.0.0.0)' -r
complete -c zcow-nbd -s k -l socket -d 'Listen on this Unix socket instead of TCP' -r -F
complete -c zcow-nbd -s x -l export-name -d 'Export name (default: empty)' -r
complete -c zcow-nbd -s D -l description -d 'Export description' -r
complete -c zcow-nbd -s e -l shared -d 'Most simultaneous clients (0 = unlimited); above 1 the export advertises multi-conn' -r
complete -c zcow-nbd -s f -l format -d 'Image format (probed when absent)' -r -f -a "qcow2\t''
raw\t''"
complete -c zcow-nbd -l pid-file -d 'Write the server\'s PID to this file' -r -F
complete -c zcow-nbd -l cache -d 'Cache mode' -r -f -a "writeback\t'Writes reach the host page cache; FLUSH/FUA make them durable'
writethrough\t'Every write is durable before it is acknowledged'
none\t'Like writethrough here (no O_DIRECT)'
directsync\t'Like writethrough here (no O_DIRECT)'
unsafe\t'Like writeback'"
complete -c zcow-nbd -l discard -d 'What TRIM does' -r -f -a "ignore\t'TRIM succeeds and does nothing'
off\t'Same as ignore'
unmap\t'TRIM deallocates'
on\t'Same as unmap'"
complete -c zcow-nbd -l handshake-limit -d 'Seconds a client may take for the handshake (0 = no limit)' -r
complete -c zcow-nbd -l tls-creds -d 'Directory with server-cert.pem, server-key.pem (and ca-cert.pem); TLS becomes mandatory' -r -F
complete -c zcow-nbd -l zoned-writes -d 'Write policy on zoned images for clients without the zoned extension' -r -f -a "strict\t'Sequential zones accept writes only at the write pointer'
readonly\t'Clients without the zoned extension see a read-only export'"
complete -c zcow-nbd -l workers -d 'Worker threads per connection' -r
complete -c zcow-nbd -l control -d 'Serve zone control requests (JSON lines: set-cond, open, close, finish, reset, report; see docs/control.md) on this Unix socket' -r -F
complete -c zcow-nbd -s r -l read-only -d 'Export read-only'
complete -c zcow-nbd -s t -l persistent -d 'Keep serving after the last client disconnects'
complete -c zcow-nbd -l fork -d 'Fork into the background once listening'
complete -c zcow-nbd -l tls-require-client-cert -d 'Require clients to present a certificate signed by ca-cert.pem'
complete -c zcow-nbd -l trace -d 'Log options and commands to stderr'
complete -c zcow-nbd -s h -l help -d 'Print help (see more with \'--help\')'
complete -c zcow-nbd -s V -l version -d 'Print version'
