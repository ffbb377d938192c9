//! The command table: names, short aliases, argument counts, usage and help
//! texts, and which commands need an open file or write permission.

/// Static description of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmdSpec {
    /// Full name (`zone_report`).
    pub name: &'static str,
    /// Short alias (`zrp`), if any.
    pub altname: Option<&'static str>,
    /// Fewest arguments (-1: no check).
    pub argmin: i32,
    /// Most arguments (-1: no limit).
    pub argmax: i32,
    /// Usage synopsis of the arguments, if any.
    pub args: Option<&'static str>,
    /// One-line description.
    pub oneline: &'static str,
    /// Extended help, printed by `help NAME` after the usage line.
    pub help: Option<&'static str>,
    /// Runs without an open file (`help`, `quit`, `open`, `sleep`).
    pub nofile_ok: bool,
    /// Needs write permission on the device (refused when read-only).
    pub writes: bool,
}

const fn spec(name: &'static str, oneline: &'static str) -> CmdSpec {
    CmdSpec {
        name,
        altname: None,
        argmin: 0,
        argmax: 0,
        args: None,
        oneline,
        help: None,
        nofile_ok: false,
        writes: false,
    }
}

const READ_HELP: &str = "
 reads a range of bytes from the given offset

 Example:
 'read -v 512 1k' - dumps 1 kilobyte read from 512 bytes into the file

 Reads part of the open device; -v dumps the data in hex on standard output.
 -b, -- read from the VM state rather than the virtual disk (qcow2)
 -C, -- print statistics in a machine parsable format
 -l, -- length for pattern verification (only with -P)
 -p, -- ignored (accepted for compatibility)
 -P, -- verify that the data read is this byte pattern
 -q, -- quiet mode, do not show I/O statistics
 -r, -- ignored (accepted for compatibility)
 -s, -- start offset for pattern verification (only with -P)
 -v, -- dump buffer to standard output
";

const TRUNCATE_HELP: &str = "
 grows or shrinks the open image to the given size in bytes

 Example:
 'truncate 1G' - makes the virtual disk 1 gigabyte long

 The new range reads as zeroes (a longer backing file does not show
 through); shrinking drops the data past the new end. qcow2 images with
 internal snapshots and zoned images cannot be resized.
 -m, -- preallocation mode: only 'off' (other modes of QEMU are refused)
";

const READV_HELP: &str = "
 reads a range of bytes from the given offset into multiple buffers

 Example:
 'readv -v 512 1k 1k ' - dumps 2 kilobytes read from 512 bytes into the file

 -C, -- print statistics in a machine parsable format
 -P, -- verify that the data read is this byte pattern
 -q, -- quiet mode, do not show I/O statistics
 -r, -- ignored (accepted for compatibility)
 -v, -- dump buffer to standard output
";

const WRITE_HELP: &str = "
 writes a range of bytes from the given offset

 Example:
 'write 512 1k' - writes 1 kilobyte at 512 bytes into the open file

 Writes a buffer filled with a byte pattern (default 0xcd).
 -b, -- write to the VM state rather than the virtual disk (qcow2)
 -c, -- write compressed data (whole clusters of a qcow2 image)
 -C, -- print statistics in a machine parsable format
 -f, -- use Force Unit Access semantics
 -n, -- with -z, fail instead of writing zeroes slowly
 -p, -- ignored (accepted for compatibility)
 -P, -- use a different pattern byte
 -q, -- quiet mode, do not show I/O statistics
 -r, -- ignored (accepted for compatibility)
 -s, -- fill the buffer with the contents of a file (repeated)
 -u, -- with -z, allow unmapping
 -z, -- write zeroes (a write-zeroes request, no data)
";

const WRITEV_HELP: &str = "
 writes a range of bytes from the given offset from multiple buffers

 Example:
 'writev 512 1k 1k' - writes 2 kilobytes at 512 bytes into the open file

 -C, -- print statistics in a machine parsable format
 -f, -- use Force Unit Access semantics
 -P, -- use a different pattern byte (default 0xcd)
 -q, -- quiet mode, do not show I/O statistics
 -r, -- ignored (accepted for compatibility)
";

const AIO_READ_HELP: &str = "
 asynchronously reads a range of bytes from the given offset

 Example:
 'aio_read -v 512 1k 1k ' - dumps 2 kilobytes read from 512 bytes into the file

 The read runs in the background; aio_flush waits for all outstanding
 requests and prints their results in the order they were issued.
 The command succeeds once the request is issued, whatever its outcome.
 -C, -- print statistics in a machine parsable format
 -i, -- only print a message (accepted for compatibility)
 -P, -- verify that the data read is this byte pattern
 -q, -- quiet mode, do not show I/O statistics
 -r, -- ignored (accepted for compatibility)
 -v, -- dump buffer to standard output
";

const AIO_WRITE_HELP: &str = "
 asynchronously writes a range of bytes from the given offset source
 from multiple buffers

 Example:
 'aio_write 512 1k 1k' - writes 2 kilobytes at 512 bytes into the open file

 The write runs in the background (several may be in flight at once);
 aio_flush waits for all outstanding requests and prints their results in
 the order they were issued. The command succeeds once the request is
 issued, whatever its outcome.
 -C, -- print statistics in a machine parsable format
 -f, -- use Force Unit Access semantics
 -i, -- only print a message (accepted for compatibility)
 -P, -- use a different pattern byte (default 0xcd)
 -q, -- quiet mode, do not show I/O statistics
 -r, -- ignored (accepted for compatibility)
 -u, -- with -z, allow unmapping
 -z, -- write zeroes (a write-zeroes request, no data)
";

const DISCARD_HELP: &str = "
 discards a range of bytes from the given offset

 Example:
 'discard 512 1k' - discards 1 kilobyte from 512 bytes into the file

 -C, -- print statistics in a machine parsable format
 -q, -- quiet mode, do not show I/O statistics
";

const OPEN_HELP: &str = "
 opens a new file in the requested mode

 Example:
 'open -r -f qcow2 /tmp/data.qcow2' - opens a qcow2 image read-only

 -r, -- open file read-only
 -f, -- image format (qcow2 or raw; probed when absent)
 -U, -- force shared permissions (read-only only; the image may be in use)
 -o, -- options: driver=FMT, read-only=on|off, file.filename=PATH; cache,
        aio, discard and qcow2 tuning keys are accepted and recorded
";

const REOPEN_HELP: &str = "
 Changes the open options of an already opened image

 -r, -- Reopen the image read-only
 -w, -- Reopen the image read-write
 -c, -- Change the cache mode to the given value (recorded)
 -o, -- Changes block driver options (cf. 'open' command; recorded)
";

const ZONE_REPORT_HELP: &str = "
 reports up to 'number' zones starting with the zone holding 'offset'

 One line per zone, all values in 512-byte sectors:
 start: 0x0, len 0x80000, cap 0x80000, wptr 0x0, zcond:1, [type: 2]
 zcond: 0 not write pointer, 1 empty, 2 implicitly open, 3 explicitly open,
 4 closed, 13 read-only, 14 full, 15 offline; type: 1 conventional,
 2 sequential write required.
";

const ZONE_APPEND_HELP: &str = "
 appends the given number of bytes (pattern 0xcd) to the zone starting at
 'offset'

 -p, -- print the sector where the data landed
 -P, -- use a different pattern byte (zcow's addition, as in write)
";

/// Every command, sorted by name (the order `help` lists them in).
pub const COMMANDS: &[CmdSpec] = &[
    CmdSpec {
        nofile_ok: true,
        ..spec("abort", "simulate a program crash using abort(3)")
    },
    spec("aio_flush", "completes all outstanding aio requests"),
    CmdSpec {
        argmin: 2,
        argmax: -1,
        args: Some("[-Ciqrv] [-P pattern] off len [len..]"),
        help: Some(AIO_READ_HELP),
        ..spec("aio_read", "asynchronously reads a number of bytes")
    },
    CmdSpec {
        argmin: 2,
        argmax: -1,
        args: Some("[-Cfiqruz] [-P pattern] off len [len..]"),
        help: Some(AIO_WRITE_HELP),
        writes: true,
        ..spec("aio_write", "asynchronously writes a number of bytes")
    },
    CmdSpec {
        altname: Some("a"),
        argmin: 1,
        argmax: 2,
        args: Some("offset [count]"),
        ..spec("alloc", "checks if offset is allocated in the file")
    },
    CmdSpec {
        altname: Some("c"),
        ..spec("close", "close the current open file")
    },
    CmdSpec {
        altname: Some("d"),
        argmin: 2,
        argmax: -1,
        args: Some("[-Cq] off len"),
        help: Some(DISCARD_HELP),
        writes: true,
        ..spec(
            "discard",
            "discards a number of bytes at a specified offset",
        )
    },
    CmdSpec {
        altname: Some("f"),
        ..spec("flush", "flush all in-core file state to disk")
    },
    CmdSpec {
        altname: Some("?"),
        argmax: 1,
        args: Some("[command]"),
        nofile_ok: true,
        ..spec("help", "help for one or all commands")
    },
    CmdSpec {
        altname: Some("i"),
        ..spec("info", "prints information about the current file")
    },
    CmdSpec {
        altname: Some("l"),
        ..spec("length", "gets the length of the current file")
    },
    CmdSpec {
        args: Some(""),
        ..spec("map", "prints the allocated areas of a file")
    },
    CmdSpec {
        altname: Some("o"),
        argmin: 1,
        argmax: -1,
        args: Some("[-rU] [-f format] [-o options] [path]"),
        help: Some(OPEN_HELP),
        nofile_ok: true,
        ..spec("open", "open the file specified by path")
    },
    CmdSpec {
        altname: Some("q"),
        argmin: -1,
        argmax: -1,
        nofile_ok: true,
        ..spec("quit", "exit the program")
    },
    CmdSpec {
        altname: Some("r"),
        argmin: 2,
        argmax: -1,
        args: Some("[-abCqrv] [-P pattern [-s off] [-l len]] off len"),
        help: Some(READ_HELP),
        ..spec("read", "reads a number of bytes at a specified offset")
    },
    CmdSpec {
        argmin: 2,
        argmax: -1,
        args: Some("[-Cqrv] [-P pattern] off len [len..]"),
        help: Some(READV_HELP),
        ..spec("readv", "reads a number of bytes at a specified offset")
    },
    CmdSpec {
        argmin: 0,
        argmax: -1,
        args: Some("[(-r|-w)] [-c cache] [-o options]"),
        help: Some(REOPEN_HELP),
        ..spec("reopen", "reopens an image with new options")
    },
    CmdSpec {
        argmin: 1,
        argmax: 1,
        args: Some("signal"),
        nofile_ok: true,
        ..spec("sigraise", "raises a signal")
    },
    CmdSpec {
        argmin: 1,
        argmax: 1,
        nofile_ok: true,
        ..spec("sleep", "waits for the given value in milliseconds")
    },
    CmdSpec {
        altname: Some("t"),
        argmin: 1,
        argmax: 3,
        args: Some("[-m prealloc_mode] off"),
        help: Some(TRUNCATE_HELP),
        writes: true,
        ..spec("truncate", "truncates the current file at the given offset")
    },
    CmdSpec {
        altname: Some("w"),
        argmin: 2,
        argmax: -1,
        args: Some("[-bcCfnqruz] [-P pattern | -s source_file] off len"),
        help: Some(WRITE_HELP),
        writes: true,
        ..spec("write", "writes a number of bytes at a specified offset")
    },
    CmdSpec {
        argmin: 2,
        argmax: -1,
        args: Some("[-Cfqr] [-P pattern] off len [len..]"),
        help: Some(WRITEV_HELP),
        writes: true,
        ..spec("writev", "writes a number of bytes at a specified offset")
    },
    CmdSpec {
        altname: Some("zap"),
        argmin: 2,
        argmax: -1,
        args: Some("[-p] [-P pattern] offset len [len..]"),
        help: Some(ZONE_APPEND_HELP),
        ..spec(
            "zone_append",
            "append write a number of bytes at a specified offset",
        )
    },
    CmdSpec {
        altname: Some("zc"),
        argmin: 2,
        argmax: 2,
        args: Some("offset len"),
        ..spec("zone_close", "close a range of zones in zone block device")
    },
    CmdSpec {
        altname: Some("zf"),
        argmin: 2,
        argmax: 2,
        args: Some("offset len"),
        ..spec(
            "zone_finish",
            "finish a range of zones in zone block device",
        )
    },
    CmdSpec {
        altname: Some("zo"),
        argmin: 2,
        argmax: 2,
        args: Some("offset len"),
        ..spec(
            "zone_open",
            "explicit open a range of zones in zone block device",
        )
    },
    CmdSpec {
        altname: Some("zrp"),
        argmin: 2,
        argmax: 2,
        args: Some("offset number"),
        help: Some(ZONE_REPORT_HELP),
        ..spec("zone_report", "report zone information")
    },
    CmdSpec {
        altname: Some("zrs"),
        argmin: 2,
        argmax: 2,
        args: Some("offset len"),
        ..spec(
            "zone_reset",
            "reset a zone write pointer in zone block device",
        )
    },
];

/// The command named `name` (full name or alias).
pub fn find(name: &str) -> Option<&'static CmdSpec> {
    COMMANDS
        .iter()
        .find(|c| c.name == name || c.altname == Some(name))
}

/// `name args -- oneline` as printed by `help` and on usage errors, with
/// the name as the user typed it.
pub fn usage_line(typed: &str, c: &CmdSpec) -> String {
    match c.args {
        Some(a) => format!("{typed} {a} -- {}", c.oneline),
        None => format!("{typed} -- {}", c.oneline),
    }
}

/// The argument-count check qemu-io makes before running a command: `None`
/// when `nargs` is acceptable, else its message (printed to stderr).
pub fn check_arg_count(typed: &str, c: &CmdSpec, nargs: usize) -> Option<String> {
    let n = i64::try_from(nargs).unwrap_or(i64::MAX);
    let (min, max) = (c.argmin as i64, c.argmax as i64);
    if n >= min && (max == -1 || n <= max) {
        return None;
    }
    Some(if max == -1 {
        format!("bad argument count {n} to {typed}, expected at least {min} arguments")
    } else if min == max {
        format!("bad argument count {n} to {typed}, expected {min} arguments")
    } else {
        format!("bad argument count {n} to {typed}, expected between {min} and {max} arguments")
    })
}

/// The full `help` listing.
pub fn help_all() -> String {
    let mut s = String::new();
    for c in COMMANDS {
        s.push_str(&usage_line(c.name, c));
        s.push('\n');
    }
    s.push_str("\nUse 'help commandname' for extended help.\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_and_unique() {
        for w in COMMANDS.windows(2) {
            assert!(w[0].name < w[1].name, "{} < {}", w[0].name, w[1].name);
        }
        let mut names: Vec<&str> = COMMANDS
            .iter()
            .flat_map(|c| std::iter::once(c.name).chain(c.altname))
            .collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn arg_count_messages() {
        let r = find("r").unwrap();
        assert_eq!(
            check_arg_count("r", r, 1).unwrap(),
            "bad argument count 1 to r, expected at least 2 arguments"
        );
        let z = find("zrp").unwrap();
        assert_eq!(
            check_arg_count("zrp", z, 0).unwrap(),
            "bad argument count 0 to zrp, expected 2 arguments"
        );
        let h = find("help").unwrap();
        assert_eq!(
            check_arg_count("help", h, 2).unwrap(),
            "bad argument count 2 to help, expected between 0 and 1 arguments"
        );
        assert!(check_arg_count("quit", find("quit").unwrap(), 5).is_none());
    }
}
