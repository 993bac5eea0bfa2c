//! Measurements of whole processes: wall time to exit, time until a line appears in the
//! output, and resident memory while the guest runs.
//!
//! Children get /dev/null as stdin. Their stdout and stderr are read by two threads, which
//! timestamp each chunk, so a pattern is matched against the two streams separately.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Output kept from each stream of a child, from its start.
const OUTPUT_LIMIT: usize = 4 << 20;

/// A chunk of child output: the stream (0 stdout, 1 stderr) and the bytes.
type Chunk = (usize, Vec<u8>);

/// A running child whose output arrives on a channel.
struct Watched {
    child: Child,
    chunks: Receiver<Chunk>,
    readers: Vec<JoinHandle<()>>,
    output: [Vec<u8>; 2],
}

impl Watched {
    /// Starts `command`; with `stdout_null` its stdout goes to /dev/null instead of a pipe.
    fn spawn(command: &[String], stdout_null: bool) -> Result<Self, String> {
        let (program, args) = command.split_first().ok_or("no command given")?;
        let stdout = if stdout_null {
            Stdio::null()
        } else {
            Stdio::piped()
        };
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| format!("starting {program} failed: {error}"))?;
        let (sender, chunks) = mpsc::channel();
        let mut readers = Vec::new();
        let streams: [Option<Box<dyn Read + Send>>; 2] = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ];
        for (index, stream) in streams.into_iter().enumerate() {
            let Some(mut stream) = stream else { continue };
            let sender = sender.clone();
            readers.push(std::thread::spawn(move || {
                let mut buffer = vec![0u8; 64 * 1024];
                while let Ok(count) = stream.read(&mut buffer) {
                    if count == 0 {
                        break;
                    }
                    let bytes = buffer.get(..count).unwrap_or_default().to_vec();
                    if sender.send((index, bytes)).is_err() {
                        break;
                    }
                }
            }));
        }
        Ok(Self {
            child,
            chunks,
            readers,
            output: [Vec::new(), Vec::new()],
        })
    }

    /// Waits until `pattern` appears on either stream; returns whether it did before
    /// `deadline`.
    fn wait_for(&mut self, pattern: &[u8], deadline: Instant) -> bool {
        loop {
            if self.contains(pattern) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(chunk) => self.keep(chunk),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    fn contains(&self, pattern: &[u8]) -> bool {
        self.output.iter().any(|stream| {
            stream
                .windows(pattern.len())
                .any(|window| window == pattern)
        })
    }

    fn keep(&mut self, (index, bytes): Chunk) {
        if let Some(stream) = self.output.get_mut(index) {
            let room = OUTPUT_LIMIT.saturating_sub(stream.len());
            stream.extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
        }
    }

    /// Waits for the child to exit and its output to end; returns the exit status.
    fn finish(mut self) -> Result<(Option<i32>, String), String> {
        let status = self
            .child
            .wait()
            .map_err(|error| format!("waiting for the child failed: {error}"))?;
        for reader in std::mem::take(&mut self.readers) {
            let _ = reader.join();
        }
        while let Ok(chunk) = self.chunks.try_recv() {
            self.keep(chunk);
        }
        let text = self
            .output
            .iter()
            .map(|stream| String::from_utf8_lossy(stream).into_owned())
            .collect::<Vec<_>>()
            .join("");
        Ok((status.code(), text))
    }

    /// Kills the child (it is this process's own child) and reaps it.
    fn kill(mut self) -> Result<(), String> {
        let _ = self.child.kill();
        self.finish().map(|_| ())
    }
}

/// Runs `command` to its end and returns its wall time, after checking its exit status and,
/// when given, that its output contains `expect_output`. With `stdout_null` the child's stdout
/// goes to /dev/null and only stderr is checked.
pub fn time_to_exit(
    command: &[String],
    expect_status: Option<i32>,
    expect_output: Option<&str>,
    stdout_null: bool,
) -> Result<Duration, String> {
    let start = Instant::now();
    let watched = Watched::spawn(command, stdout_null)?;
    let (status, text) = watched.finish()?;
    let elapsed = start.elapsed();
    if let Some(expected) = expect_status {
        if status != Some(expected) {
            return Err(format!(
                "{command:?} exited with {status:?}, expected {expected}; output: {}",
                tail(&text)
            ));
        }
    }
    if let Some(expected) = expect_output {
        if !text.contains(expected) {
            return Err(format!(
                "{command:?} did not print {expected:?}; output: {}",
                tail(&text)
            ));
        }
    }
    Ok(elapsed)
}

/// Starts `command` and returns the time until `pattern` appears in its output, then kills it.
pub fn time_to_pattern(
    command: &[String],
    pattern: &str,
    timeout: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    let mut watched = Watched::spawn(command, false)?;
    let found = watched.wait_for(pattern.as_bytes(), start + timeout);
    let elapsed = start.elapsed();
    if !found {
        let _ = watched.child.kill();
        let (_, text) = watched.finish()?;
        return Err(format!(
            "{command:?} did not print {pattern:?} within {timeout:?}; output: {}",
            tail(&text)
        ));
    }
    watched.kill()?;
    Ok(elapsed)
}

/// Resident memory of a running process, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Resident {
    /// Peak resident set (VmHWM).
    pub peak_kib: u64,
    /// Resident pages of the mappings that back guest memory.
    pub guest_kib: u64,
}

/// Starts `command`, waits until `pattern` appears (the guest is up and has touched what it
/// will touch), reads its memory after `settle`, then kills it.
///
/// A mapping counts as guest memory when it is anonymous (no file) and its size is one of
/// `guest_sizes_kib`, or at most `slack_kib` larger than one, to allow for the alignment
/// padding QEMU adds to its RAM blocks.
///
/// NOTE: the kernel may merge a guest mapping with an adjacent anonymous mapping of the same
/// protection, and then its size matches no guest region and its pages count as VMM memory.
/// With the benchmark guests that affects at most their few firmware pages.
pub fn resident(
    command: &[String],
    pattern: &str,
    guest_sizes_kib: &[u64],
    slack_kib: u64,
    settle: Duration,
) -> Result<Resident, String> {
    let start = Instant::now();
    let mut watched = Watched::spawn(command, false)?;
    if !watched.wait_for(pattern.as_bytes(), start + Duration::from_secs(60)) {
        let _ = watched.child.kill();
        let (_, text) = watched.finish()?;
        return Err(format!(
            "{command:?} did not print {pattern:?}; output: {}",
            tail(&text)
        ));
    }
    std::thread::sleep(settle);
    let pid = watched.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"));
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"));
    watched.kill()?;
    let status = status.map_err(|error| format!("reading /proc/{pid}/status failed: {error}"))?;
    let smaps = smaps.map_err(|error| format!("reading /proc/{pid}/smaps failed: {error}"))?;
    let peak_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .ok_or("no VmHWM line in /proc/PID/status")?;
    Ok(Resident {
        peak_kib,
        guest_kib: guest_resident_kib(&smaps, guest_sizes_kib, slack_kib),
    })
}

/// Sums the `Rss` of the anonymous mappings in `smaps` whose size matches a guest region.
fn guest_resident_kib(smaps: &str, guest_sizes_kib: &[u64], slack_kib: u64) -> u64 {
    let mut total = 0;
    let mut anonymous = false;
    let mut size = 0;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            // A mapping header: "start-end perms offset dev inode [path]".
            anonymous = fields.nth(4).is_none();
            size = 0;
        } else if first == "Size:" {
            size = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        } else if first == "Rss:" {
            let rss: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let guest = guest_sizes_kib
                .iter()
                .any(|&guest| size >= guest && size <= guest + slack_kib);
            if anonymous && guest {
                total += rss;
            }
        }
    }
    total
}

/// Returns the last 2000 characters of `text`, for error messages.
fn tail(text: &str) -> &str {
    let start = text.len().saturating_sub(2000);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text.get(start..).unwrap_or_default()
}
