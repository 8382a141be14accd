//! The thread that builds `/metrics` and `/v1/status` answers: off the tokio workers (which also
//! run the engine task and the health checks) and at a lower CPU priority (nice 10), so that on a
//! busy gateway scrapes wait for failovers, never the other way round.

use std::sync::mpsc;

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// The nice value of the worker thread (the scheduler gives a nice-10 thread about a tenth of
/// the CPU of a nice-0 one when both want it).
pub const WORKER_NICE: i32 = 10;

#[derive(Clone)]
pub struct Worker {
    tx: mpsc::Sender<Job>,
}

impl Worker {
    /// Starts the thread. Lowering its priority is best effort: without it the answers are the
    /// same, only the ordering under CPU contention is lost (a warning says so).
    pub fn spawn() -> std::io::Result<Worker> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("ftn-api-work".into())
            .spawn(move || {
                // SAFETY: plain syscalls on this thread's own id.
                let r = unsafe {
                    let tid = libc::gettid();
                    libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, WORKER_NICE)
                };
                if r != 0 {
                    tracing::warn!(
                        "cannot lower the API worker's priority: {}; scrapes compete with failovers for the CPU",
                        std::io::Error::last_os_error()
                    );
                }
                while let Ok(job) = rx.recv() {
                    job();
                }
            })?;
        Ok(Worker { tx })
    }

    /// Runs `f` on the worker thread and returns its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Box::new(move || {
                let _ = reply.send(f());
            }))
            .map_err(|_| "the API worker thread is gone".to_string())?;
        rx.await
            .map_err(|_| "the API worker thread is gone".to_string())
    }
}
