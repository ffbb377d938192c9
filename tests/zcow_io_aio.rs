//! `aio_write` really has several requests in flight at once: a device
//! whose writes only finish when three are running together.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use zcow::device::{BlockDevice, DevResult, DeviceError, Extent, ZeroFlags};
use zcow::iocmd::run_script;
use zcow::raw::RawDevice;

#[derive(Debug)]
struct Rendezvous {
    inner: RawDevice,
    need: usize,
    state: Mutex<(usize, bool)>,
    cv: Condvar,
}

impl BlockDevice for Rendezvous {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> DevResult<()> {
        self.inner.read(offset, buf)
    }
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> DevResult<()> {
        let mut st = self.state.lock().unwrap();
        st.0 += 1;
        if st.0 >= self.need {
            st.1 = true;
            self.cv.notify_all();
        }
        let (st, timeout) = self
            .cv
            .wait_timeout_while(st, Duration::from_secs(5), |s| !s.1)
            .unwrap();
        drop(st);
        if timeout.timed_out() {
            return Err(DeviceError::Invalid(
                "writes were not in flight together".into(),
            ));
        }
        self.inner.write(offset, data, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> DevResult<()> {
        self.inner.write_zeroes(offset, len, flags)
    }
    fn discard(&self, offset: u64, len: u64) -> DevResult<()> {
        self.inner.discard(offset, len)
    }
    fn flush(&self) -> DevResult<()> {
        self.inner.flush()
    }
    fn block_status(&self, offset: u64, len: u64) -> DevResult<Vec<Extent>> {
        self.inner.block_status(offset, len)
    }
}

#[test]
fn three_writes_in_flight_together() {
    let dev = Arc::new(Rendezvous {
        inner: RawDevice::memory(1 << 20).unwrap(),
        need: 3,
        state: Mutex::new((0, false)),
        cv: Condvar::new(),
    });
    let out = run_script(
        dev,
        &[
            "aio_write -q -P 1 0 4k",
            "aio_write -q -P 2 64k 4k",
            "aio_write -q -P 3 128k 4k",
            "aio_flush",
            "read -q -P 1 0 4k",
            "read -q -P 2 64k 4k",
            "read -q -P 3 128k 4k",
        ],
    );
    assert_eq!(out.stdout, "");
    assert_eq!(out.stderr, "");
    assert_eq!(out.exit_code, 0);
}

#[test]
fn pending_requests_complete_at_close_and_exit() {
    let dev = Arc::new(RawDevice::memory(1 << 20).unwrap());
    let out = run_script(
        dev,
        &[
            "aio_write -P 1 0 512",
            "aio_read -q 0 512",
            "close",
            "aio_write 0 512",
        ],
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert_eq!(lines[0], "wrote 512/512 bytes at offset 0");
    assert_eq!(out.stderr, "no file open, try 'help open'\n");
}
