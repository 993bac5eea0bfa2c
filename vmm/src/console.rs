//! The guest console: where COM1 output goes, where its input comes from, and the sinks for the
//! debug console on port 0x402.
//!
//! Input runs on an event-manager loop in its own thread: an [`EventSubscriber`] waits on stdin
//! (or on the socket of a [`SerialCapture`]) and moves the bytes into the UART's receive FIFO.
//! The FIFO has room for 64 bytes, so bytes that do not fit wait in a queue and the loop offers them
//! again every few milliseconds. Ctrl-A x quits igvmm, Ctrl-A Ctrl-A sends one Ctrl-A, and
//! Ctrl-A h prints this help on stderr.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::serial::Serial;
use event_manager::{EventManager, EventOps, EventSet, EventSubscriber, Events, SubscriberOps};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::control::StopHandle;
use crate::exit::{StopReason, StopRequest};

/// Ctrl-A, the console escape byte.
const ESCAPE: u8 = 0x01;
/// Input bytes queued beyond this are dropped (a paste far larger than the guest reads).
const MAX_PENDING_INPUT: usize = 64 * 1024;
/// How often the input loop checks for a stop when nothing wakes it, in milliseconds.
/// [`ConsoleThread::join`] wakes it at once, so this only bounds the wait of a loop whose
/// thread is never joined.
const POLL_INTERVAL_MS: i32 = 100;
/// How often queued input is offered to a full FIFO, in milliseconds.
const RETRY_INTERVAL_MS: i32 = 5;

/// Error in a console option.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConsoleError {
    /// The `--serial` or `--debugcon` value is not one of the accepted forms.
    #[error("invalid {option} value {value:?}: expected {expected}")]
    InvalidOption {
        /// The option name.
        option: &'static str,
        /// The rejected value.
        value: String,
        /// The accepted forms.
        expected: &'static str,
    },
}

/// A byte buffer that several threads share: one writes guest output, others read or wait.
#[derive(Debug, Clone, Default)]
pub struct SharedBuffer {
    inner: Arc<(Mutex<Vec<u8>>, Condvar)>,
}

impl SharedBuffer {
    /// Creates an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.inner
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns a copy of the bytes written so far.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().clone()
    }

    /// Returns the bytes written so far as text, with invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock()).into_owned()
    }

    /// Waits until the buffer contains `needle` or `timeout` passes; returns whether it appeared.
    pub fn wait_for(&self, needle: &[u8], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut bytes = self.lock();
        loop {
            if needle.is_empty() || bytes.windows(needle.len()).any(|window| window == needle) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            bytes = match self.inner.1.wait_timeout(bytes, deadline - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Returns a writer that appends to the buffer.
    pub fn writer(&self) -> SharedBufferWriter {
        SharedBufferWriter {
            buffer: self.clone(),
        }
    }
}

/// Appends to a [`SharedBuffer`] and wakes its waiters.
#[derive(Debug, Clone)]
pub struct SharedBufferWriter {
    buffer: SharedBuffer,
}

impl Write for SharedBufferWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.lock().extend_from_slice(bytes);
        self.buffer.inner.1.notify_all();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// COM1 connected to memory instead of the terminal, for tests and embedding: output collects
/// in a [`SharedBuffer`], and [`SerialCapture::send_input`] types into the guest.
#[derive(Debug, Clone)]
pub struct SerialCapture {
    /// Bytes the guest transmitted.
    output: SharedBuffer,
    /// The writing end of the input socket.
    input_writer: Arc<Mutex<UnixStream>>,
    /// The reading end, taken by the VM when it starts.
    input_reader: Arc<Mutex<Option<UnixStream>>>,
}

impl SerialCapture {
    /// Creates a capture with an empty output buffer and an input socket pair.
    pub fn new() -> io::Result<Self> {
        let (writer, reader) = UnixStream::pair()?;
        Ok(Self {
            output: SharedBuffer::new(),
            input_writer: Arc::new(Mutex::new(writer)),
            input_reader: Arc::new(Mutex::new(Some(reader))),
        })
    }

    /// Returns the output buffer.
    pub fn output(&self) -> &SharedBuffer {
        &self.output
    }

    /// Returns the output so far as text.
    pub fn text(&self) -> String {
        self.output.text()
    }

    /// Waits until the output contains `needle` or `timeout` passes.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        self.output.wait_for(needle.as_bytes(), timeout)
    }

    /// Sends bytes to the guest as if typed. Ctrl-A escapes apply, so `b"\x01x"` stops the VM.
    pub fn send_input(&self, bytes: &[u8]) -> io::Result<()> {
        self.input_writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .write_all(bytes)
    }

    fn take_reader(&self) -> Option<UnixStream> {
        self.input_reader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

/// The destination of COM1.
#[derive(Debug, Clone)]
pub enum SerialConfig {
    /// Output to stdout, input from stdin (raw mode when stdin is a terminal).
    Stdio,
    /// Output to a file, created or truncated; no input.
    File(PathBuf),
    /// No output and no input; the UART still exists.
    None,
    /// Output and input in memory.
    Capture(SerialCapture),
}

impl SerialConfig {
    /// Parses a `--serial` value: `stdio`, `none` or `file:PATH`.
    pub fn parse(text: &str) -> Result<Self, ConsoleError> {
        match text {
            "stdio" => Ok(SerialConfig::Stdio),
            "none" => Ok(SerialConfig::None),
            _ => match text.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(SerialConfig::File(PathBuf::from(path))),
                _ => Err(ConsoleError::InvalidOption {
                    option: "--serial",
                    value: text.to_string(),
                    expected: "stdio, none or file:PATH",
                }),
            },
        }
    }
}

/// The destination of the debug console (port 0x402).
#[derive(Debug, Clone)]
pub enum DebugconConfig {
    /// Each line is logged at info level with target `guest-debugcon`.
    Log,
    /// Written to a file, created or truncated.
    File(PathBuf),
    /// Discarded.
    None,
    /// Collected in memory.
    Capture(SharedBuffer),
}

impl DebugconConfig {
    /// Parses a `--debugcon` value: `log`, `none` or `file:PATH`.
    pub fn parse(text: &str) -> Result<Self, ConsoleError> {
        match text {
            "log" => Ok(DebugconConfig::Log),
            "none" => Ok(DebugconConfig::None),
            _ => match text.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(DebugconConfig::File(PathBuf::from(path))),
                _ => Err(ConsoleError::InvalidOption {
                    option: "--debugcon",
                    value: text.to_string(),
                    expected: "log, none or file:PATH",
                }),
            },
        }
    }

    /// Opens the sink.
    pub fn open(&self) -> io::Result<Box<dyn Write + Send>> {
        Ok(match self {
            DebugconConfig::Log => Box::new(LogLineWriter::new("guest-debugcon")),
            DebugconConfig::File(path) => Box::new(File::create(path)?),
            DebugconConfig::None => Box::new(io::sink()),
            DebugconConfig::Capture(buffer) => Box::new(buffer.writer()),
        })
    }
}

/// Logs each complete line written to it at info level under `target`.
#[derive(Debug)]
pub struct LogLineWriter {
    /// The log target.
    target: &'static str,
    /// Bytes of the line not yet ended.
    line: Vec<u8>,
}

/// Lines longer than this are logged in pieces.
const MAX_LOG_LINE: usize = 4096;

impl LogLineWriter {
    /// Creates a writer for `target`.
    pub fn new(target: &'static str) -> Self {
        Self {
            target,
            line: Vec::new(),
        }
    }

    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end_matches('\r');
        log::info!(target: self.target, "{text}");
        self.line.clear();
    }
}

impl Write for LogLineWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        for &byte in bytes {
            if byte == b'\n' {
                self.emit();
            } else {
                self.line.push(byte);
                if self.line.len() >= MAX_LOG_LINE {
                    self.emit();
                }
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

/// Opens the COM1 output sink for `config`.
pub fn open_serial_output(config: &SerialConfig) -> io::Result<Box<dyn Write + Send>> {
    Ok(match config {
        SerialConfig::Stdio => Box::new(io::stdout()),
        SerialConfig::File(path) => Box::new(File::create(path)?),
        SerialConfig::None => Box::new(io::sink()),
        SerialConfig::Capture(capture) => Box::new(capture.output.writer()),
    })
}

/// The command the escape filter found in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EscapeAction {
    /// Nothing beyond forwarding bytes.
    None,
    /// Ctrl-A x: quit.
    Quit,
}

/// Removes the Ctrl-A escape sequences from console input.
#[derive(Debug, Default)]
pub(crate) struct EscapeFilter {
    /// The previous byte was a lone Ctrl-A.
    after_escape: bool,
}

impl EscapeFilter {
    /// Appends the bytes of `input` meant for the guest to `out`. Stops at Ctrl-A x.
    pub(crate) fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> EscapeAction {
        for &byte in input {
            if !self.after_escape {
                if byte == ESCAPE {
                    self.after_escape = true;
                } else {
                    out.push(byte);
                }
                continue;
            }
            self.after_escape = false;
            match byte {
                b'x' | b'X' => return EscapeAction::Quit,
                ESCAPE => out.push(ESCAPE),
                b'h' | b'H' => {
                    crate::commands::write_stderr(
                        "\r\nCtrl-A x: quit igvmm   Ctrl-A Ctrl-A: send Ctrl-A to the guest\r\n",
                    );
                }
                other => {
                    out.push(ESCAPE);
                    out.push(other);
                }
            }
        }
        EscapeAction::None
    }
}

/// A readable, pollable input: a duplicate of stdin or a capture socket.
trait InputSource: Read + AsRawFd + Send + Sync {}
impl InputSource for File {}
impl InputSource for UnixStream {}

/// The mutable part of [`ConsoleInput`].
struct InputState {
    /// The source of input bytes.
    source: Box<dyn InputSource>,
    /// Ctrl-A handling.
    filter: EscapeFilter,
    /// Bytes waiting for room in the FIFO.
    pending: VecDeque<u8>,
    /// Bytes dropped because `pending` was full.
    dropped: u64,
}

/// The event-manager subscriber that feeds COM1 from an input source.
pub(crate) struct ConsoleInput {
    /// The source's descriptor, fixed for the subscriber's life.
    fd: RawFd,
    /// Written by [`ConsoleThread::join`] so that the loop's epoll wait returns at once.
    wake: EventFd,
    /// The UART.
    serial: Arc<Mutex<Serial>>,
    /// Stopped on Ctrl-A x.
    stop: StopHandle,
    state: Mutex<InputState>,
}

impl ConsoleInput {
    fn new(
        source: Box<dyn InputSource>,
        serial: Arc<Mutex<Serial>>,
        stop: StopHandle,
    ) -> io::Result<Self> {
        Ok(Self {
            fd: source.as_raw_fd(),
            wake: EventFd::new(EFD_NONBLOCK)?,
            serial,
            stop,
            state: Mutex::new(InputState {
                source,
                filter: EscapeFilter::default(),
                pending: VecDeque::new(),
                dropped: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, InputState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Offers queued bytes to the UART. Returns whether bytes remain queued.
    fn flush_pending(&self) -> bool {
        let mut state = self.lock();
        if state.pending.is_empty() {
            return false;
        }
        let mut serial = self
            .serial
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (front, _) = state.pending.as_slices();
        let taken = serial.enqueue_input(front);
        drop(serial);
        state.pending.drain(..taken);
        !state.pending.is_empty()
    }

    /// Reads what the source has; returns false at end of input.
    fn read_input(&self) -> bool {
        let mut buffer = [0u8; 4096];
        let mut state = self.lock();
        let count = match state.source.read(&mut buffer) {
            Ok(0) => return false,
            Ok(count) => count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => return true,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return true,
            Err(error) => {
                log::warn!("console input failed, no more input goes to the guest: {error}");
                return false;
            }
        };
        let mut forwarded = Vec::with_capacity(count);
        let action = state
            .filter
            .feed(buffer.get(..count).unwrap_or_default(), &mut forwarded);
        for byte in forwarded {
            if state.pending.len() >= MAX_PENDING_INPUT {
                state.dropped += 1;
                if state.dropped == 1 {
                    log::warn!("console input queue full; dropping input the guest has not read");
                }
                continue;
            }
            state.pending.push_back(byte);
        }
        if action == EscapeAction::Quit {
            self.stop.stop(StopReason::Requested(StopRequest::Console));
        }
        true
    }
}

impl EventSubscriber for ConsoleInput {
    fn process(&self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.wake.as_raw_fd() {
            // The loop only has to return to see the stop, so the counter's value is unused.
            if let Err(error) = self.wake.read() {
                log::debug!("failed to read the console wake event: {error}");
            }
            return;
        }
        let readable = events.event_set().contains(EventSet::IN);
        let closed = events
            .event_set()
            .intersects(EventSet::HANG_UP | EventSet::ERROR);
        if (readable && !self.read_input()) || (!readable && closed) {
            log::debug!("console input ended");
            if let Err(error) = ops.remove(Events::empty_raw(self.fd)) {
                log::debug!("failed to stop watching console input: {error}");
            }
        }
        self.flush_pending();
    }

    fn init(&self, ops: &mut EventOps) {
        if let Err(error) = ops.add(Events::new(&self.wake, EventSet::IN)) {
            // The loop still sees the stop, POLL_INTERVAL_MS later.
            log::warn!("failed to watch the console wake event: {error}");
        }
        if let Err(error) = ops.add(Events::new_raw(self.fd, EventSet::IN)) {
            // epoll rejects regular files and /dev/null with EPERM; such stdin has nothing to
            // wait for.
            log::debug!("console input is not pollable, the guest gets no input: {error}");
        }
    }
}

/// The thread that runs the console input loop.
pub(crate) struct ConsoleThread {
    handle: JoinHandle<()>,
    /// A duplicate of the loop's wake event.
    wake: EventFd,
}

impl ConsoleThread {
    /// Wakes the loop and waits for the thread. Call it once the VM is stopping: the loop ends
    /// when it wakes and sees the stop.
    pub(crate) fn join(self) {
        if let Err(error) = self.wake.write(1) {
            log::debug!("failed to wake the console input loop: {error}");
        }
        if self.handle.join().is_err() {
            log::warn!("the console input thread panicked");
        }
    }
}

/// Opens the input source for `config`: a duplicate of stdin or the capture socket.
fn open_input(config: &SerialConfig) -> io::Result<Option<Box<dyn InputSource>>> {
    match config {
        SerialConfig::Stdio => {
            let fd = io::stdin().as_fd().try_clone_to_owned()?;
            Ok(Some(Box::new(File::from(fd))))
        }
        SerialConfig::Capture(capture) => Ok(capture
            .take_reader()
            .map(|reader| Box::new(reader) as Box<dyn InputSource>)),
        SerialConfig::File(_) | SerialConfig::None => Ok(None),
    }
}

/// Starts the input loop for `config`, or nothing when the console takes no input.
pub(crate) fn start_input(
    config: &SerialConfig,
    serial: Arc<Mutex<Serial>>,
    stop: StopHandle,
) -> io::Result<Option<ConsoleThread>> {
    let Some(source) = open_input(config)? else {
        return Ok(None);
    };
    spawn_input_loop(source, serial, stop, POLL_INTERVAL_MS).map(Some)
}

/// Runs the input loop for `source` on a new thread, which checks for a stop each time epoll
/// returns and at least every `poll_interval_ms`.
fn spawn_input_loop(
    source: Box<dyn InputSource>,
    serial: Arc<Mutex<Serial>>,
    stop: StopHandle,
    poll_interval_ms: i32,
) -> io::Result<ConsoleThread> {
    let input = Arc::new(ConsoleInput::new(source, serial, stop.clone())?);
    let wake = input.wake.try_clone()?;
    let mut manager: EventManager<Arc<ConsoleInput>> =
        EventManager::new().map_err(|error| io::Error::other(error.to_string()))?;
    manager.add_subscriber(input.clone());
    let handle = std::thread::Builder::new()
        .name("console".into())
        .spawn(move || {
            let mut interval = poll_interval_ms;
            while !stop.is_stopping() {
                if let Err(error) = manager.run_with_timeout(interval) {
                    log::warn!(
                        "console event loop failed, no more input goes to the guest: {error}"
                    );
                    break;
                }
                interval = if input.flush_pending() {
                    RETRY_INTERVAL_MS
                } else {
                    poll_interval_ms
                };
            }
        })?;
    Ok(ConsoleThread { handle, wake })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn escape_filter_sequences() {
        let mut filter = EscapeFilter::default();
        let mut out = Vec::new();
        assert_eq!(
            filter.feed(b"ab\x01\x01c\x01z", &mut out),
            EscapeAction::None
        );
        assert_eq!(out, b"ab\x01c\x01z");
        out.clear();
        // The escape may arrive in one read and its command in the next.
        assert_eq!(filter.feed(b"q\x01", &mut out), EscapeAction::None);
        assert_eq!(filter.feed(b"x", &mut out), EscapeAction::Quit);
        assert_eq!(out, b"q");
    }

    #[test]
    fn serial_option_parsing() {
        assert!(matches!(
            SerialConfig::parse("stdio"),
            Ok(SerialConfig::Stdio)
        ));
        assert!(matches!(
            SerialConfig::parse("none"),
            Ok(SerialConfig::None)
        ));
        assert!(
            matches!(SerialConfig::parse("file:/tmp/out.txt"), Ok(SerialConfig::File(path)) if path == std::path::Path::new("/tmp/out.txt"))
        );
        assert_eq!(
            SerialConfig::parse("file:").err(),
            Some(ConsoleError::InvalidOption {
                option: "--serial",
                value: "file:".into(),
                expected: "stdio, none or file:PATH"
            })
        );
        assert!(SerialConfig::parse("tcp:1234").is_err());
        assert!(matches!(
            DebugconConfig::parse("log"),
            Ok(DebugconConfig::Log)
        ));
        assert!(DebugconConfig::parse("stdio").is_err());
    }

    #[test]
    fn shared_buffer_wait() {
        let buffer = SharedBuffer::new();
        let mut writer = buffer.writer();
        let waiter = {
            let buffer = buffer.clone();
            std::thread::spawn(move || buffer.wait_for(b"ready", Duration::from_secs(5)))
        };
        writer.write_all(b"not yet, ").unwrap();
        writer.write_all(b"ready\n").unwrap();
        assert!(waiter.join().unwrap());
        assert!(!buffer.wait_for(b"never", Duration::from_millis(10)));
        assert_eq!(buffer.text(), "not yet, ready\n");
    }

    #[test]
    fn console_join_wakes_input_loop() {
        // The socket never becomes readable, so only the wake event can end the wait early.
        let (_writer, reader) = UnixStream::pair().unwrap();
        let serial = Arc::new(Mutex::new(Serial::new(
            EventFd::new(EFD_NONBLOCK).unwrap(),
            Box::new(io::sink()),
        )));
        let stop = StopHandle::new();
        let poll_interval_ms = 600_000;
        let thread =
            spawn_input_loop(Box::new(reader), serial, stop.clone(), poll_interval_ms).unwrap();
        // Let the loop enter its epoll wait before the stop.
        std::thread::sleep(Duration::from_millis(50));
        stop.request_stop();
        let started = Instant::now();
        thread.join();
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_secs(30),
            "join took {waited:?}; the loop waited for its {poll_interval_ms} ms timeout"
        );
    }

    #[test]
    fn log_line_writer_splits_lines() {
        let mut writer = LogLineWriter::new("test");
        writer.write_all(b"one\r\ntw").unwrap();
        assert_eq!(writer.line, b"tw");
        writer.write_all(b"o\n").unwrap();
        assert!(writer.line.is_empty());
    }
}
