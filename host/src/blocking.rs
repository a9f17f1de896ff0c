//! Waiting for a future from synchronous code: a plugin's host call (a WASI write, a
//! key-value read from Redis) runs inside the plugin's call and must return its result.
//!
//! The plugin's own thread may simply block. A stateless plugin, though, runs on one of
//! the async runtime's threads, where blocking on the runtime panics (tokio refuses to
//! start a runtime inside a runtime) and blocking any other way would stall every other
//! connection of that thread. So a call here first looks whether its result is ready at
//! once (a log line always is) and otherwise blocks with [`tokio::task::block_in_place`],
//! which first hands the thread's other tasks to another thread. Work that blocks
//! without a future (a disk write) goes through [`block_here`].

use std::pin::pin;
use std::task::{Context, Poll, Waker};

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `future` to its end on this thread, within `runtime` (whose I/O and timers it
/// may use), from any thread: the plugin's, or one of `runtime`'s own.
pub fn wait_on<F: Future>(runtime: &Handle, future: F) -> F::Output {
    let _context = runtime.enter();
    let mut future = pin!(future);
    if let Poll::Ready(output) = future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        return output;
    }
    block_here(|| runtime.block_on(future))
}

/// Runs `work`, which blocks (a wait, a disk write), on this thread. On a thread of a
/// multi-threaded runtime, that thread's other tasks go to another thread first.
pub fn block_here<R>(work: impl FnOnce() -> R) -> R {
    match Handle::try_current() {
        // Outside the runtime's own threads, block_in_place runs `work` as it is.
        Ok(runtime) if runtime.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// [`wait_on`] the runtime this thread is in, or else on wasmtime-wasi's own (WASI's
/// host calls, which need one for their timers).
pub fn wait_for<F: Future>(future: F) -> F::Output {
    match Handle::try_current() {
        Ok(runtime) => wait_on(&runtime, future),
        Err(_) => wasmtime_wasi::runtime::in_tokio(future),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_ready_future_is_taken_at_once_without_blocking() {
        // Blocking would panic here, on the only thread of a current-thread runtime.
        assert_eq!(wait_for(async { 7 }), 7);
    }

    #[test]
    fn a_runtime_thread_waits_while_its_other_tasks_go_on() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (tell, told) = tokio::sync::oneshot::channel::<u32>();
            // The only worker blocks in this task until the other one has run; without
            // the hand-over that one never would.
            let waiting = tokio::spawn(async move { wait_for(async { told.await.unwrap() }) });
            tokio::task::yield_now().await;
            let other = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                tell.send(42).unwrap();
            });
            assert_eq!(waiting.await.unwrap(), 42);
            other.await.unwrap();
        });
    }

    #[test]
    fn blocking_work_on_a_runtime_thread_lets_its_other_tasks_go_on() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let answer = runtime.block_on(async {
            let (tell, told) = std::sync::mpsc::channel::<u32>();
            let blocked = tokio::spawn(async move { block_here(|| told.recv_timeout(Duration::from_secs(10))) });
            tokio::task::yield_now().await;
            tokio::spawn(async move { tell.send(7).unwrap() }).await.unwrap();
            blocked.await.unwrap()
        });
        assert_eq!(answer, Ok(7));
    }

    #[test]
    fn a_thread_outside_the_runtime_blocks_on_it() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let slept = wait_on(runtime.handle(), async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            "slept"
        });
        assert_eq!(slept, "slept");
    }
}
