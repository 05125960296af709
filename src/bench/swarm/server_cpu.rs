//! The CPU time and resident memory of the processes under test (`--pids`), and waiting until
//! they are quiet again after an action.
//!
//! CPU is the process's user + system time over all its threads — the quantity of utime + stime
//! in /proc/PID/stat — read through the process's CPU clock (`clock_getcpuclockid`), which counts
//! nanoseconds where /proc/PID/stat counts 10 ms ticks: a single join costs microseconds. Where
//! that clock cannot be read, /proc/PID/stat is used and the report says so. Linux only. It only
//! reads: it never signals or changes the processes.

use std::time::Duration;

use super::super::idle::rss_kib;
use super::super::BenchError;

/// Where CPU times come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuSource {
    /// `clock_gettime` on the process's CPU clock: nanoseconds.
    CpuClock,
    /// utime + stime of /proc/PID/stat: clock ticks.
    ProcStat,
}

impl CpuSource {
    pub fn name(self) -> &'static str {
        match self {
            CpuSource::CpuClock => "clock_getcpuclockid (utime+stime, ns)",
            CpuSource::ProcStat => "/proc/PID/stat utime+stime (ticks)",
        }
    }
}

/// One watched process.
#[derive(Debug, Clone, Copy)]
pub struct Proc {
    pub pid: u32,
    clock: Option<libc::clockid_t>,
}

impl Proc {
    /// Checks that the process exists and picks its CPU clock.
    pub fn new(pid: u32) -> Result<Self, BenchError> {
        rss_kib(pid)?;
        let mut clock: libc::clockid_t = 0;
        let pid_t = libc::pid_t::try_from(pid).map_err(|_| BenchError::Pid {
            pid,
            reason: "not a valid pid".into(),
        })?;
        // SAFETY: clock_getcpuclockid writes one clockid_t into the variable we pass.
        let found = unsafe { libc::clock_getcpuclockid(pid_t, &mut clock) } == 0;
        let proc = Self {
            pid,
            clock: found.then_some(clock),
        };
        // The clock must also be readable, else fall back to /proc/PID/stat.
        Ok(match proc.clock_ns() {
            Some(_) => proc,
            None => Self { pid, clock: None },
        })
    }

    pub fn source(&self) -> CpuSource {
        if self.clock.is_some() {
            CpuSource::CpuClock
        } else {
            CpuSource::ProcStat
        }
    }

    fn clock_ns(&self) -> Option<u64> {
        clock_ns(self.clock?)
    }

    /// CPU time used so far, in nanoseconds.
    pub fn cpu_ns(&self) -> Result<u64, BenchError> {
        if let Some(ns) = self.clock_ns() {
            return Ok(ns);
        }
        proc_stat_cpu_ns(self.pid)
    }

    pub fn rss_kib(&self) -> Result<u64, BenchError> {
        rss_kib(self.pid)
    }
}

/// utime + stime of /proc/PID/stat, in nanoseconds.
fn proc_stat_cpu_ns(pid: u32) -> Result<u64, BenchError> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| BenchError::Pid {
            pid,
            reason: e.to_string(),
        })?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 overall are utime and stime: 11 and 12 after the name.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    let (Some(utime), Some(stime)) = (ticks(11), ticks(12)) else {
        return Err(BenchError::Pid {
            pid,
            reason: "cannot parse utime and stime of /proc/PID/stat".into(),
        });
    };
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100);
    Ok((utime + stime) * 1_000_000_000 / hz)
}

/// Every watched process.
#[derive(Debug, Clone, Default)]
pub struct Procs(pub Vec<Proc>);

impl Procs {
    pub fn new(pids: &[u32]) -> Result<Self, BenchError> {
        pids.iter()
            .map(|&p| Proc::new(p))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each process's CPU time, in nanoseconds.
    pub fn cpu_ns(&self) -> Result<Vec<u64>, BenchError> {
        self.0.iter().map(Proc::cpu_ns).collect()
    }

    /// All processes' CPU time together.
    pub fn total_cpu_ns(&self) -> Result<u64, BenchError> {
        Ok(self.cpu_ns()?.iter().sum())
    }

    pub fn rss_kib(&self) -> Result<Vec<u64>, BenchError> {
        self.0.iter().map(Proc::rss_kib).collect()
    }
}

/// One thread's CPU time and how often it was scheduled, from /proc/PID/task/TID/schedstat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadCpu {
    pub pid: u32,
    pub tid: u32,
    pub name: String,
    pub cpu_ns: u64,
    /// Times the thread was put on a CPU (each wake-up counts one).
    pub runs: u64,
}

/// Every thread of the watched processes (threads that cannot be read, having just exited, are
/// left out). Empty where the kernel has no schedstat.
pub fn threads(procs: &Procs) -> Vec<ThreadCpu> {
    let mut out = Vec::new();
    for p in &procs.0 {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", p.pid)) else {
            continue;
        };
        for entry in dir.flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let base = entry.path();
            let (Ok(stat), Ok(name)) = (
                std::fs::read_to_string(base.join("schedstat")),
                std::fs::read_to_string(base.join("comm")),
            ) else {
                continue;
            };
            let mut fields = stat.split_whitespace().map(|f| f.parse::<u64>().ok());
            let (Some(Some(cpu_ns)), _, Some(Some(runs))) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            out.push(ThreadCpu {
                pid: p.pid,
                tid,
                name: name.trim().to_string(),
                cpu_ns,
                runs,
            });
        }
    }
    out
}

/// What each thread used between two `threads` readings (threads new since `before` count from
/// zero), busiest first, leaving out those that did not run.
pub fn thread_deltas(before: &[ThreadCpu], after: &[ThreadCpu]) -> Vec<ThreadCpu> {
    let mut out: Vec<ThreadCpu> = after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.pid == a.pid && b.tid == a.tid);
            ThreadCpu {
                cpu_ns: a.cpu_ns - b.map_or(0, |b| b.cpu_ns.min(a.cpu_ns)),
                runs: a.runs - b.map_or(0, |b| b.runs.min(a.runs)),
                ..a.clone()
            }
        })
        .filter(|d| d.runs > 0)
        .collect();
    out.sort_by_key(|d| std::cmp::Reverse(d.cpu_ns));
    out
}

/// `clock`'s time in nanoseconds (a CPU clock: a process's, or `CLOCK_THREAD_CPUTIME_ID`).
pub fn clock_ns(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the variable we pass.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(u64::try_from(ts.tv_sec).ok()? * 1_000_000_000 + u64::try_from(ts.tv_nsec).ok()?)
}

/// The CPU an action cost, measured until the processes were quiet again.
#[derive(Debug, Clone, Copy)]
pub struct Settled {
    /// CPU used from before the action until quiet, less the idle rate over that time.
    pub cpu_ns: u64,
    /// From before the action until the first of the quiet windows.
    pub secs: f64,
    /// False when the processes were still busy when the wait ran out.
    pub quiet: bool,
}

/// Length of one window checked for quiet.
const WINDOW: Duration = Duration::from_millis(50);
/// Consecutive quiet windows that make the processes quiet.
const QUIET_WINDOWS: u32 = 3;
/// CPU a window may use beyond the idle rate and still count as quiet.
const QUIET_SLACK_NS: u64 = 20_000;

/// The idle CPU rate of the processes, in nanoseconds per second, over `over`.
pub async fn idle_rate(procs: &Procs, over: Duration) -> Result<f64, BenchError> {
    let t0 = tokio::time::Instant::now();
    let c0 = procs.total_cpu_ns()?;
    tokio::time::sleep(over).await;
    let c1 = procs.total_cpu_ns()?;
    Ok(c1.saturating_sub(c0) as f64 / t0.elapsed().as_secs_f64().max(1e-9))
}

/// Waits until `QUIET_WINDOWS` windows in a row use no more than the idle rate (plus a slack),
/// or `max` after `t_before`, counting from `cpu_before` / `t_before` (sampled before the action).
pub async fn settle(
    procs: &Procs,
    idle_ns_per_sec: f64,
    cpu_before: u64,
    t_before: tokio::time::Instant,
    max: Duration,
) -> Result<Settled, BenchError> {
    let allowance = (idle_ns_per_sec * WINDOW.as_secs_f64()) as u64 + QUIET_SLACK_NS;
    let mut prev = procs.total_cpu_ns()?;
    let mut quiet_run = 0u32;
    let mut busy_until = tokio::time::Instant::now();
    let mut busy_cpu = prev;
    loop {
        tokio::time::sleep(WINDOW).await;
        let now_cpu = procs.total_cpu_ns()?;
        let now = tokio::time::Instant::now();
        if now_cpu.saturating_sub(prev) <= allowance {
            quiet_run += 1;
        } else {
            quiet_run = 0;
            busy_until = now;
            busy_cpu = now_cpu;
        }
        prev = now_cpu;
        let quiet = quiet_run >= QUIET_WINDOWS;
        if quiet || now.duration_since(t_before) > max {
            let secs = busy_until.duration_since(t_before).as_secs_f64();
            let idle = (idle_ns_per_sec * secs) as u64;
            return Ok(Settled {
                cpu_ns: busy_cpu.saturating_sub(cpu_before).saturating_sub(idle),
                secs,
                quiet,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_cpu_both_ways() {
        let me = Proc::new(std::process::id()).unwrap();
        assert_eq!(me.source(), CpuSource::CpuClock);
        // Burn a little CPU so both counters are past zero.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let clock = me.cpu_ns().unwrap();
        let stat = proc_stat_cpu_ns(std::process::id()).unwrap();
        assert!(clock > 0 && stat <= clock + 50_000_000, "{clock} vs {stat}");
        assert!(Proc::new(u32::MAX).is_err());
    }

    #[test]
    fn reads_its_own_threads() {
        let procs = Procs::new(&[std::process::id()]).unwrap();
        let before = threads(&procs);
        assert!(!before.is_empty());
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        std::thread::yield_now();
        let deltas = thread_deltas(&before, &threads(&procs));
        assert!(deltas.iter().any(|d| d.cpu_ns > 0), "{deltas:?}");
    }
}
