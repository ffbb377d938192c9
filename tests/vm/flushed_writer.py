#!/usr/bin/env python3
"""Write load for the crash test: writes CHUNK-byte pieces of DATA in order
to DEV from OFFSET on, each with O_DIRECT followed by fsync (a flush), and
records the index of every piece whose write and flush both completed in ACK
(one line each, flushed). Stops quietly at the first error: the device
going away under it is the point of the test.

With --verify, reads the first COUNT pieces back (O_DIRECT) and names the
first one that differs (exit 1).

usage: flushed_writer.py DEV DATA OFFSET CHUNK COUNT ACK
       flushed_writer.py --verify DEV DATA OFFSET CHUNK COUNT"""
import mmap
import os
import sys


def verify():
    dev, data, offset, chunk, count = sys.argv[2:7]
    offset, chunk, count = int(offset), int(chunk), int(count)
    with open(data, "rb") as f:
        src = f.read()
    pieces = len(src) // chunk
    fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, chunk)
    for i in range(count):
        k = (i % pieces) * chunk
        if os.preadv(fd, [buf], offset + i * chunk) != chunk or buf[:] != src[k:k + chunk]:
            print(f"piece {i} at device offset {offset + i * chunk} differs")
            return 1
    print(f"{count} pieces read back")
    return 0


def main():
    if sys.argv[1] == "--verify":
        return verify()
    dev, data, offset, chunk, count, ack = sys.argv[1:7]
    offset, chunk, count = int(offset), int(chunk), int(count)
    with open(data, "rb") as f:
        src = f.read()
    pieces = len(src) // chunk
    # The device is opened once: a path reopened after the device vanished
    # would be a new regular file in /dev.
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, chunk)  # page aligned, as O_DIRECT needs
    with open(ack, "a") as log:
        for i in range(count):
            k = (i % pieces) * chunk
            buf[:] = src[k:k + chunk]
            try:
                if os.pwrite(fd, buf, offset + i * chunk) != chunk:
                    return 0
                os.fsync(fd)
            except OSError as e:
                print(f"writer: stopped at piece {i}: {e}", file=sys.stderr)
                return 0
            log.write(f"{i}\n")
            log.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
