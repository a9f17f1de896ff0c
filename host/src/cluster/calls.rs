//! Redis commands for callers that wait for the answer on their own thread: a plugin's
//! key-value call, or its `info` of another host's connection.
//!
//! A stateless plugin makes those calls on one of the async runtime's threads. Waiting
//! there for a future of that same runtime could stall it for good (with every runtime
//! thread waiting, nothing would read Redis's answers), so the commands run on a thread
//! of their own, with a single-threaded runtime and a Redis connection of their own, and
//! the caller waits for a channel ([`crate::blocking::block_here`]).
//!
//! Commands reach Redis in the order they were given, on one connection, so a read given
//! after a write sees it, whichever thread gave each: the store's writes need not wait
//! for their answers ([`RedisCalls::submit`]) for the next read to be right.

use std::pin::Pin;
use std::sync::mpsc::RecvTimeoutError;
use std::task::Poll;
use std::thread;
use std::time::Duration;

use anyhow::Context as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, oneshot};

use crate::blocking::block_here;

/// How long a command may wait for the thread to take it up, beyond its own timeout.
const QUEUED_TOO_LONG: Duration = Duration::from_secs(1);

/// Where the answer to a submitted command goes, on the calls' thread.
pub type Answer<T> = Box<dyn FnOnce(Result<T, String>) + Send>;

/// A command to run, given the connection.
type Job = Box<dyn FnOnce(ConnectionManager) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The thread that runs Redis commands for waiting callers.
pub struct RedisCalls {
    jobs: mpsc::UnboundedSender<Job>,
}

impl RedisCalls {
    /// Starts the thread and connects it to `client` with `config` (without waiting on
    /// the calling thread: this is called from the async runtime).
    pub async fn start(client: redis::Client, config: ConnectionManagerConfig) -> anyhow::Result<RedisCalls> {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        let (connected, connecting) = oneshot::channel();
        thread::Builder::new()
            .name("cluster-calls".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = connected.send(Err(anyhow::Error::new(error)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let manager = match ConnectionManager::new_with_config(client, config).await {
                        Ok(manager) => {
                            let _ = connected.send(Ok(()));
                            manager
                        }
                        Err(error) => {
                            let _ = connected.send(Err(error.into()));
                            return;
                        }
                    };
                    // Each command is started here, in the order given, which puts it in
                    // the connection's queue to Redis (its first poll does); then it
                    // waits for its answer as a task of its own, so that the commands
                    // share the one connection, pipelined, instead of waiting for each
                    // other.
                    while let Some(job) = queue.recv().await {
                        let mut command = job(manager.clone());
                        let answered =
                            std::future::poll_fn(|cx| Poll::Ready(command.as_mut().poll(cx).is_ready())).await;
                        if !answered {
                            tokio::spawn(command);
                        }
                    }
                });
            })
            .context("cannot start the cluster-calls thread")?;
        connecting.await.context("the cluster-calls thread ended")??;
        Ok(RedisCalls { jobs })
    }

    /// Gives `command` to Redis after every command given before it, without waiting:
    /// `answer` gets its answer (or why there is none within `timeout`), on the calls'
    /// thread. An error here means it was not given.
    pub fn submit<T>(
        &self,
        command: redis::Pipeline,
        timeout: Duration,
        answer: impl FnOnce(Result<T, String>) + Send + 'static,
    ) -> Result<(), String>
    where
        T: redis::FromRedisValue + Send + 'static,
    {
        self.submit_made(timeout, move || Some((command, Box::new(answer) as Answer<T>)))
    }

    /// Like [`RedisCalls::submit`], with the command made by `make` when the calls'
    /// thread takes it up, in the order given (`None`: nothing to send). Writes given
    /// meanwhile can so join a command already in line.
    pub fn submit_made<T>(
        &self,
        timeout: Duration,
        make: impl FnOnce() -> Option<(redis::Pipeline, Answer<T>)> + Send + 'static,
    ) -> Result<(), String>
    where
        T: redis::FromRedisValue + Send + 'static,
    {
        let job: Job = Box::new(move |mut manager| {
            Box::pin(async move {
                let Some((command, answer)) = make() else {
                    return;
                };
                let result = match tokio::time::timeout(timeout, command.query_async::<T>(&mut manager)).await {
                    Ok(result) => result.map_err(|error| error.to_string()),
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                };
                answer(result);
            })
        });
        self.jobs
            .send(job)
            .map_err(|_| "the cluster-calls thread ended".to_owned())
    }

    /// Runs `command` and waits for its answer, at most `timeout`, on this thread.
    pub fn query<T>(&self, command: redis::Pipeline, timeout: Duration) -> Result<T, String>
    where
        T: redis::FromRedisValue + Send + 'static,
    {
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        self.submit(command, timeout, move |result| {
            let _ = answer.send(result);
        })?;
        // The command's own timeout starts once the thread takes it up: this one bounds
        // the wait for that too.
        match block_here(|| answered.recv_timeout(timeout + QUEUED_TOO_LONG)) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(format!("not run within {:?}", timeout + QUEUED_TOO_LONG)),
            Err(RecvTimeoutError::Disconnected) => Err("the cluster-calls thread ended".to_owned()),
        }
    }
}
