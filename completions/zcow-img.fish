# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_zcow_img_global_optspecs
    string join \n h/help V/version
end

function __fish_zcow_img_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_zcow_img_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_zcow_img_using_subcommand
    set -l cmd (__fish_zcow_img_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c zcow-img -n "__fish_zcow_img_needs_command" -s h -l help -d 'Print help'
complete -c zcow-img -n "__fish_zcow_img_needs_command" -s V -l version -d 'Print version'
complete -c zcow-img -n "__fish_zcow_img_needs_command" -f -a "create" -d 'Create an image: create [-q] [-p] [-f qcow2] [-o opt=val,...] [-b BACKING [-F FMT]] FILE [SIZE]'
complete -c zcow-img -n "__fish_zcow_img_needs_command" -f -a "info" -d 'Show information about an image'
complete -c zcow-img -n "__fish_zcow_img_needs_command" -f -a "check" -d 'Check an image for consistency (qemu-img check compatible), and optionally repair it: check [-f qcow2] [-r leaks|all] [--output human|json] [-q] [-p] FILE'
complete -c zcow-img -n "__fish_zcow_img_needs_command" -f -a "repair" -d 'Repair everything that can be derived (check -r all plus the zoned repairs), printing what changes'
complete -c zcow-img -n "__fish_zcow_img_needs_command" -f -a "convert" -d 'Convert or copy images: convert [-c] [-p] [-q] [-n] [-W] [-m N] [-f FMT] [-O FMT] [-o OPTS] [-S SIZE] [--target-is-zero] SOURCE... TARGET'
complete -c zcow-img -n "__fish_zcow_img_needs_command" -f -a "compare" -d 'Compare two images: compare [-f FMT] [-F FMT] [-s] [-q] [-p] [--ignore-zones] FILE1 FILE2'
complete -c zcow-img -n "__fish_zcow_img_needs_command" -f -a "map" -d 'Show the mapping of an image: map [-f FMT] [--output human|json] [--start-offset N] [--max-length N] FILE'
complete -c zcow-img -n "__fish_zcow_img_needs_command" -f -a "measure" -d 'Measure the size a new image needs: measure [--output human|json] [-O FMT] [-o OPTS] [--size N | [-f FMT] FILE]'
complete -c zcow-img -n "__fish_zcow_img_needs_command" -f -a "amend" -d 'Change options of an image in place: amend [-f FMT] -o OPTS [-q] FILE'
complete -c zcow-img -n "__fish_zcow_img_needs_command" -f -a "zone" -d 'Zone commands'
complete -c zcow-img -n "__fish_zcow_img_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand create" -s f -d 'Image format (qcow2 or raw)' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand create" -s o -d 'Options: cluster_size, compat, refcount_bits, lazy_refcounts, preallocation, compression_type, extended_l2, backing_file, backing_fmt, zone.mode, zone.size, zone.capacity, zone.conventional_zones, zone.max_open_zones, zone.max_active_zones, zone.max_append_bytes' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand create" -s b -d 'Backing file' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand create" -s F -d 'Backing file format' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand create" -l object -d 'Object definition, as qemu-img --object (validated and recorded: zcow has no secrets or throttle groups)' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand create" -s q -d 'Quiet: no Formatting line'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand create" -s p -d 'Show a progress bar while preallocating (on a terminal only)'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand create" -s h -l help -d 'Print help'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand info" -s f -d 'Image format (qcow2 or raw; probed when absent)' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand info" -l output -d 'Output format: human or json' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand info" -l object -d 'Object definition, as qemu-img --object (validated and recorded: zcow has no secrets or throttle groups)' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand info" -l backing-chain -d 'Show every image of the backing chain'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand info" -s U -l force-share -d 'Take no locks that exclude others (the image may be in use and change while it is read)'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand info" -l image-opts -d 'Treat FILE as an option string: driver=FMT,file.filename=PATH (other keys of QEMU\'s block layer are recorded, see docs/conformance.md)'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand info" -s h -l help -d 'Print help'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand check" -s f -d 'Image format (qcow2; raw images cannot be checked)' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand check" -s r -l repair -d 'Repair: leaks, or all' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand check" -l output -d 'Output format: human or json' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand check" -l object -d 'Object definition, as qemu-img --object (validated and recorded: zcow has no secrets or throttle groups)' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand check" -s q -d 'Quiet: print nothing on stdout'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand check" -s p -d 'Show a progress bar (on a terminal only)'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand check" -s U -l force-share -d 'Take no locks that exclude others (read-only checks only)'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand check" -l image-opts -d 'Treat FILE as an option string: driver=FMT,file.filename=PATH (other keys of QEMU\'s block layer are recorded, see docs/conformance.md)'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand check" -s h -l help -d 'Print help'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand repair" -l backup -d 'Save every metadata cluster the repair rewrites to FILE, so the repair can be undone with --undo' -r -F
complete -c zcow-img -n "__fish_zcow_img_using_subcommand repair" -l undo -d 'Undo an earlier repair from its backup FILE' -r -F
complete -c zcow-img -n "__fish_zcow_img_using_subcommand repair" -l output -d 'Output format: human or json' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand repair" -l dry-run -d 'Print what would change, change nothing'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand repair" -l force -d 'Replace an existing backup FILE (refused otherwise)'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand repair" -s p -d 'Show a progress bar (on a terminal only)'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand repair" -s h -l help -d 'Print help'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand convert" -s f -d 'Source format (raw or qcow2; probed when absent)' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand convert" -s O -d 'Target format (raw or qcow2; default raw)' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand convert" -s o -d 'Target create options (as for create, including zone.*)' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand convert" -s S -d 'Zero-detection granule (default 4k; 0 writes every byte)' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand convert" -s m -d 'Parallel requests (1-16)' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand convert" -s n -d 'The target exists: do not create it'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand convert" -l target-is-zero -d 'The target reads as zeroes already (needs -n)'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand convert" -s W -d 'Allow out-of-order writes (parallel copy onto non-zoned targets)'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand convert" -s c -d 'Compressed output: each cluster of a qcow2 target compressed with its compression_type (zlib or zstd; set with -o compression_type=...)'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand convert" -s p -d 'Show a progress bar (on a terminal)'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand convert" -s q -d 'Quiet'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand convert" -s h -l help -d 'Print help'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand compare" -s f -d 'Format of the first image' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand compare" -s F -d 'Format of the second image' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand compare" -s s -d 'Strict: sizes and allocation must match too'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand compare" -s q -d 'Quiet'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand compare" -s p -d 'Progress (accepted for qemu-img compatibility)'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand compare" -l ignore-zones -d 'Do not compare the write pointers and conditions of zoned images'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand compare" -s h -l help -d 'Print help'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand map" -s f -d 'Image format (probed when absent)' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand map" -l output -d 'Output format: human or json' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand map" -l start-offset -d 'First byte to map' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand map" -l max-length -d 'Bytes to map at most' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand map" -l object -d 'Object definition, as qemu-img --object (validated and recorded: zcow has no secrets or throttle groups)' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand map" -l image-opts -d 'Treat FILE as an option string: driver=FMT,file.filename=PATH (other keys of QEMU\'s block layer are recorded, see docs/conformance.md)'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand map" -s h -l help -d 'Print help'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand measure" -l output -d 'Output format: human or json' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand measure" -s O -d 'Target format (raw or qcow2; default raw)' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand measure" -s o -d 'Target create options (including zone.*)' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand measure" -l size -d 'Measure an empty image of this size' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand measure" -s f -d 'Source format' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand measure" -s h -l help -d 'Print help'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand amend" -s f -d 'Image format (qcow2)' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand amend" -s o -d 'Options: lazy_refcounts, zone.max_open_zones, zone.max_active_zones, zone.max_append_bytes (\'help\' lists them)' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand amend" -s q -d 'Quiet'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand amend" -s p -d 'Progress (accepted for qemu-img compatibility)'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand amend" -s h -l help -d 'Print help'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand zone; and not __fish_seen_subcommand_from report map set-cond help" -s h -l help -d 'Print help'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand zone; and not __fish_seen_subcommand_from report map set-cond help" -f -a "report" -d 'Report zones (of an image: the persistent state, as after a power cycle; of a device: its live state)'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand zone; and not __fish_seen_subcommand_from report map set-cond help" -f -a "map" -d 'Draw every zone, coloured by condition and filled to its write pointer: an SVG picture (default) or text for a terminal'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand zone; and not __fish_seen_subcommand_from report map set-cond help" -f -a "set-cond" -d 'Set or clear a persistent fault condition: readonly, offline, clear'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand zone; and not __fish_seen_subcommand_from report map set-cond help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand zone; and __fish_seen_subcommand_from report" -l offset -d 'Start at the zone holding this byte offset' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand zone; and __fish_seen_subcommand_from report" -l count -d 'At most this many zones' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand zone; and __fish_seen_subcommand_from report" -l output -d 'Output format: human or json' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand zone; and __fish_seen_subcommand_from report" -s U -l force-share -d 'Take no locks that exclude others (the image may be in use; the report shows what is durable on disk now)'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand zone; and __fish_seen_subcommand_from report" -s p -d 'Show a progress bar while reading the zones (on a terminal only)'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand zone; and __fish_seen_subcommand_from report" -s h -l help -d 'Print help'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand zone; and __fish_seen_subcommand_from map" -l output -d 'svg or text' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand zone; and __fish_seen_subcommand_from map" -s o -d 'Write the map to FILE instead of standard output' -r -F
complete -c zcow-img -n "__fish_zcow_img_using_subcommand zone; and __fish_seen_subcommand_from map" -l width -d 'Cells per line of the text map' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand zone; and __fish_seen_subcommand_from map" -s f -d 'Image format (qcow2); probed when absent' -r
complete -c zcow-img -n "__fish_zcow_img_using_subcommand zone; and __fish_seen_subcommand_from map" -s h -l help -d 'Print help'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand zone; and __fish_seen_subcommand_from set-cond" -l control -d 'Send the change to the control socket of the zcow-nbd serving the image (its --control PATH) instead of opening the image' -r -F
complete -c zcow-img -n "__fish_zcow_img_using_subcommand zone; and __fish_seen_subcommand_from set-cond" -s h -l help -d 'Print help'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand zone; and __fish_seen_subcommand_from help" -f -a "report" -d 'Report zones (of an image: the persistent state, as after a power cycle; of a device: its live state)'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand zone; and __fish_seen_subcommand_from help" -f -a "map" -d 'Draw every zone, coloured by condition and filled to its write pointer: an SVG picture (default) or text for a terminal'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand zone; and __fish_seen_subcommand_from help" -f -a "set-cond" -d 'Set or clear a persistent fault condition: readonly, offline, clear'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand zone; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand help; and not __fish_seen_subcommand_from create info check repair convert compare map measure amend zone help" -f -a "create" -d 'Create an image: create [-q] [-p] [-f qcow2] [-o opt=val,...] [-b BACKING [-F FMT]] FILE [SIZE]'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand help; and not __fish_seen_subcommand_from create info check repair convert compare map measure amend zone help" -f -a "info" -d 'Show information about an image'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand help; and not __fish_seen_subcommand_from create info check repair convert compare map measure amend zone help" -f -a "check" -d 'Check an image for consistency (qemu-img check compatible), and optionally repair it: check [-f qcow2] [-r leaks|all] [--output human|json] [-q] [-p] FILE'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand help; and not __fish_seen_subcommand_from create info check repair convert compare map measure amend zone help" -f -a "repair" -d 'Repair everything that can be derived (check -r all plus the zoned repairs), printing what changes'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand help; and not __fish_seen_subcommand_from create info check repair convert compare map measure amend zone help" -f -a "convert" -d 'Convert or copy images: convert [-c] [-p] [-q] [-n] [-W] [-m N] [-f FMT] [-O FMT] [-o OPTS] [-S SIZE] [--target-is-zero] SOURCE... TARGET'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand help; and not __fish_seen_subcommand_from create info check repair convert compare map measure amend zone help" -f -a "compare" -d 'Compare two images: compare [-f FMT] [-F FMT] [-s] [-q] [-p] [--ignore-zones] FILE1 FILE2'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand help; and not __fish_seen_subcommand_from create info check repair convert compare map measure amend zone help" -f -a "map" -d 'Show the mapping of an image: map [-f FMT] [--output human|json] [--start-offset N] [--max-length N] FILE'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand help; and not __fish_seen_subcommand_from create info check repair convert compare map measure amend zone help" -f -a "measure" -d 'Measure the size a new image needs: measure [--output human|json] [-O FMT] [-o OPTS] [--size N | [-f FMT] FILE]'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand help; and not __fish_seen_subcommand_from create info check repair convert compare map measure amend zone help" -f -a "amend" -d 'Change options of an image in place: amend [-f FMT] -o OPTS [-q] FILE'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand help; and not __fish_seen_subcommand_from create info check repair convert compare map measure amend zone help" -f -a "zone" -d 'Zone commands'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand help; and not __fish_seen_subcommand_from create info check repair convert compare map measure amend zone help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand help; and __fish_seen_subcommand_from zone" -f -a "report" -d 'Report zones (of an image: the persistent state, as after a power cycle; of a device: its live state)'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand help; and __fish_seen_subcommand_from zone" -f -a "map" -d 'Draw every zone, coloured by condition and filled to its write pointer: an SVG picture (default) or text for a terminal'
complete -c zcow-img -n "__fish_zcow_img_using_subcommand help; and __fish_seen_subcommand_from zone" -f -a "set-cond" -d 'Set or clear a persistent fault condition: readonly, offline, clear'
