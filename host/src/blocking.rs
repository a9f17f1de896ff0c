//! Waiting inside a plugin's host call, which is synchronous: a WASI write or sleep, a
//! key-value write to disk, a Redis command (see [`crate::cluster::calls`]).
//!
//! The plugin's own thread may simply block. A stateless plugin, though, runs on one of
//! the async runtime's threads, where blocking holds up every other connection of that
//! thread, and blocking on the runtime itself panics (tokio refuses to start a runtime
//! inside a runtime). So a wait there first hands the thread's other tasks to another
//! thread ([`tokio::task::block_in_place`]). Each such hand-over puts one more thread to
//! work as a runtime thread, and each thread that calls a stateless plugin makes an
//! instance of its own: so no more hand-overs than the runtime has threads run at once.
//! Past that, work that does not need the runtime ([`block_here`]) blocks its thread as
//! it is, and a wait for one of the runtime's futures ([`wait_for`]) is refused.

use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `work`, which blocks (a disk write, a wait for another thread), on this thread.
/// On a runtime thread, its other tasks go to another thread first, if the bound on
/// hand-overs allows. `work` must never wait for this runtime: the runtime's threads may
/// all be waiting.
pub fn block_here<R>(work: impl FnOnce() -> R) -> R {
    match HandOver::take() {
        Some(_handed_over) => tokio::task::block_in_place(work),
        None => work(),
    }
}

/// Runs `future` (a WASI host call's) to its end on this thread, within the runtime it
/// is in, or wasmtime-wasi's own on a thread outside any runtime. A result that is ready
/// at once takes no hand-over: a log line, or a poll with no timeout (WASI's clock
/// pollable for "now" is pending once, then ready). Refused in a task on a runtime thread
/// when the bound on hand-overs is reached.
pub fn wait_for<F: Future>(future: F) -> Result<F::Output, TooManyWaiting> {
    let Ok(runtime) = Handle::try_current() else {
        return Ok(wasmtime_wasi::runtime::in_tokio(future));
    };
    // Outside tokio's cooperative budget: a ready future must not look pending because
    // the task that makes the call has used its budget up.
    let mut future = pin!(tokio::task::unconstrained(future));
    let mut context = Context::from_waker(Waker::noop());
    for _ in 0..2 {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return Ok(output);
        }
    }
    if runtime.runtime_flavor() != RuntimeFlavor::MultiThread {
        return Ok(runtime.block_on(future)); // a current-thread runtime never runs plugins
    }
    // Not in a task (the plugin's thread, or the runtime's `block_on` at start-up):
    // block_in_place runs the closure as it is, or leaves the runtime first.
    let _handed_over = match tokio::task::try_id() {
        Some(_) => Some(HandOver::take().ok_or(TooManyWaiting)?),
        None => None,
    };
    Ok(tokio::task::block_in_place(|| runtime.block_on(future)))
}

/// A wait in a task on a runtime thread was refused: as many as the runtime has threads
/// were waiting already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("as many calls as the runtime has threads were already waiting on its threads")]
pub struct TooManyWaiting;

/// Runtime threads waiting in [`tokio::task::block_in_place`] now.
static HANDED_OVER: AtomicUsize = AtomicUsize::new(0);

/// One of them, counted while it lives.
struct HandOver;

impl HandOver {
    /// A hand-over, if this is a task on a multi-threaded runtime's thread and fewer than
    /// that runtime's number of threads are handed over already.
    fn take() -> Option<HandOver> {
        tokio::task::try_id()?;
        let runtime = Handle::try_current().ok()?;
        if runtime.runtime_flavor() != RuntimeFlavor::MultiThread {
            return None;
        }
        let most = runtime.metrics().num_workers();
        HANDED_OVER
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < most).then_some(n + 1))
            .ok()
            .map(|_| HandOver)
    }
}

impl Drop for HandOver {
    fn drop(&mut self) {
        HANDED_OVER.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    /// The bound is the process's: tests that hand over take turns.
    static TURNS: Mutex<()> = Mutex::new(());

    fn one_worker() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn a_ready_future_is_taken_at_once_without_blocking() {
        // Blocking would panic here, on the only thread of a current-thread runtime.
        assert_eq!(wait_for(async { 7 }), Ok(7));
    }

    #[test]
    fn a_runtime_thread_waits_while_its_other_tasks_go_on() {
        let _turn = TURNS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        one_worker().block_on(async {
            let (tell, told) = tokio::sync::oneshot::channel::<u32>();
            // The only worker blocks in this task until the other one has run; without
            // the hand-over that one never would.
            let waiting = tokio::spawn(async move {
                wait_for(async {
                    tokio::time::timeout(Duration::from_secs(10), told)
                        .await
                        .unwrap()
                        .unwrap()
                })
            });
            tokio::task::yield_now().await;
            let other = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                tell.send(42).unwrap();
            });
            assert_eq!(waiting.await.unwrap(), Ok(42));
            other.await.unwrap();
        });
    }

    #[test]
    fn no_more_waits_than_the_runtime_has_threads() {
        let _turn = TURNS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        one_worker().block_on(async {
            let (tell, told) = std::sync::mpsc::channel::<()>();
            // The one hand-over the runtime allows: a task blocked until told.
            let first = tokio::spawn(async move { block_here(|| told.recv_timeout(Duration::from_secs(10))) });
            while HANDED_OVER.load(Ordering::Acquire) == 0 {
                tokio::task::yield_now().await;
            }
            // The next task runs on the thread that took over, and is refused; but a
            // future that is ready at its second poll is no wait.
            let second = tokio::spawn(async { wait_for(std::future::pending::<()>()) });
            assert_eq!(second.await.unwrap(), Err(TooManyWaiting));
            let quick = tokio::spawn(async {
                wait_for(async {
                    tokio::task::yield_now().await;
                    5
                })
            });
            assert_eq!(quick.await.unwrap(), Ok(5));
            tell.send(()).unwrap();
            assert_eq!(first.await.unwrap(), Ok(()));
        });
        assert_eq!(HANDED_OVER.load(Ordering::Acquire), 0);
    }

    #[test]
    fn blocking_work_on_a_runtime_thread_lets_its_other_tasks_go_on() {
        let _turn = TURNS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let answer = one_worker().block_on(async {
            let (tell, told) = std::sync::mpsc::channel::<u32>();
            let blocked = tokio::spawn(async move { block_here(|| told.recv_timeout(Duration::from_secs(10))) });
            tokio::task::yield_now().await;
            tokio::spawn(async move { tell.send(7).unwrap() }).await.unwrap();
            blocked.await.unwrap()
        });
        assert_eq!(answer, Ok(7));
    }

    #[test]
    fn a_thread_of_its_own_blocks_on_the_runtime() {
        let runtime = one_worker();
        let _inside = runtime.enter();
        let slept = wait_for(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            "slept"
        });
        assert_eq!(slept, Ok("slept"));
    }
}
