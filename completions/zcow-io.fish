complete -c zcow-io -s c -l cmd -d 'Execute a command (repeatable; commands run in order)' -r
complete -c zcow-io -s f -l format -d 'Image format (qcow2 or raw; probed when absent)' -r
complete -c zcow-io -s t -l cache -d 'Cache mode: none, writeback, writethrough, directsync, unsafe (validated, then recorded: zcow writes through its own page-cache path and flushes on flush/close in every mode)' -r
complete -c zcow-io -s i -l aio -d 'AIO mode: threads, native, io_uring (validated, then recorded: zcow uses threads)' -r
complete -c zcow-io -s d -l discard -d 'Discard mode: ignore/off or unmap/on (validated, then recorded)' -r
complete -c zcow-io -l object -d 'Object definition (accepted and ignored: zcow has no secrets or throttle groups)' -r
complete -c zcow-io -s r -l read-only -d 'Open the image read-only'
complete -c zcow-io -s U -l force-share -d 'Open the image with no locks that exclude others (read-only only), as qemu-io -U: other processes may change it while it is read'
complete -c zcow-io -s n -l nocache -d 'Disable the host cache, short for -t none (accepted and recorded: zcow has one cache mode)'
complete -c zcow-io -s k -l native-aio -d 'Kernel AIO, short for -i native (accepted and recorded)'
complete -c zcow-io -s s -l snapshot -d 'Snapshot mode: the image is opened read-only and writes are kept in memory, discarded at exit'
complete -c zcow-io -s C -l copy-on-read -d 'Copy-on-read: data read from the backing chain is written into the image (whole clusters; all-zero data is left unallocated)'
complete -c zcow-io -s m -l misalign -d 'Misalign buffers for O_DIRECT (accepted and recorded: no effect)'
complete -c zcow-io -l image-opts -d 'Treat FILE as an option string: driver=FMT,file.filename=PATH[,...]'
complete -c zcow-io -s h -l help -d 'Print help'
complete -c zcow-io -s V -l version -d 'Print version'
