//! The tenant write budget shared by every replica, kept in PostgreSQL.
//!
//! One token bucket per name (`write_budget` table), refilled at `rate × factor` tokens a
//! second up to `burst`. A caller takes its tokens at once in a single `UPDATE` (row lock,
//! no polling), letting the balance go negative, and sleeps off its share of the debt: callers
//! on all replicas are served in the order they asked, and the configured rate holds for all
//! of them together. On a 429 the factor drops by `DECREASE_FACTOR` (at most once a
//! second, down to `MIN_FACTOR`) and recovers by `RECOVERY_PER_SECOND` back to 1: the workers slow down on
//! their own when the tenant pushes back, and speed up again afterwards.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::PgPool;

use super::events::{
    WriteBudgetTaken, WriteBudgetUnavailable, WriteBudgetWaited, WriteRateLowered,
    WriteRateNotLowered,
};
use crate::telemetry::emit;
use crate::tenant::WriteBudget;

/// Lowest share of the configured rate after repeated 429s.
const MIN_FACTOR: f64 = 0.1;
/// Share of the configured rate regained per second without 429s.
const RECOVERY_PER_SECOND: f64 = 0.1;
/// What a 429 leaves of the rate in force: a firm but not drastic step back. A rare 429 at a
/// window boundary (writes arriving in clumps of a few `$batch`es) must not cost much of the
/// budget: at 0.7 each such 429 cost about 90 writes at 200 a second (the realistic
/// benchmark met nine of them per 10,000 writes); repeated 429s still bring the rate down fast.
const DECREASE_FACTOR: f64 = 0.85;

#[derive(Debug, Clone)]
pub struct PgWriteBudget {
    pool: PgPool,
    name: String,
    rate: f64,
    burst: f64,
}

impl PgWriteBudget {
    /// A budget of `rate` writes a second and at most `burst` at once, shared under `name`.
    /// Touches no database until the first write (the row is created then).
    pub fn new(pool: PgPool, name: &str, rate: f64, burst: NonZeroU32) -> Self {
        Self {
            pool,
            name: name.to_owned(),
            rate,
            burst: f64::from(burst.get()),
        }
    }

    /// Take `n` tokens; returns the balance after taking them and the rate in force.
    async fn take(&self, n: u32) -> Result<(f64, f64), sqlx::Error> {
        sqlx::query_as(
            "INSERT INTO write_budget AS w (name, tokens) VALUES ($1, $3 - $5)
             ON CONFLICT (name) DO UPDATE SET
                 factor = least(1.0, w.factor
                                     + $4 * extract(epoch FROM clock_timestamp() - w.updated_at)),
                 tokens = least($3, w.tokens + $2 * w.factor
                                    * extract(epoch FROM clock_timestamp() - w.updated_at)) - $5,
                 updated_at = clock_timestamp()
             RETURNING tokens, $2 * factor",
        )
        .bind(&self.name)
        .bind(self.rate)
        .bind(self.burst)
        .bind(RECOVERY_PER_SECOND)
        .bind(f64::from(n))
        .fetch_one(&self.pool)
        .await
    }
}

#[async_trait]
impl WriteBudget for PgWriteBudget {
    async fn acquire(&self, n: u32) {
        let started = Instant::now();
        let wait = match self.take(n).await {
            Ok((tokens, rate)) if tokens < 0.0 && rate > 0.0 => {
                emit(WriteBudgetTaken {
                    factor: rate / self.rate,
                });
                Duration::from_secs_f64(-tokens / rate)
            }
            Ok((_, rate)) => {
                emit(WriteBudgetTaken {
                    factor: rate / self.rate,
                });
                Duration::ZERO
            }
            Err(error) => {
                // Without the database the budget cannot be shared: stay safely under the
                // rate on our own rather than stop writing.
                emit(WriteBudgetUnavailable { error: &error });
                Duration::from_secs_f64(f64::from(n) / self.rate)
            }
        };
        tokio::time::sleep(wait).await;
        emit(WriteBudgetWaited {
            waited: started.elapsed(),
        });
    }

    fn throttled(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let result = sqlx::query(
                "UPDATE write_budget SET factor = greatest($2, factor * $3),
                        tokens = least(tokens, 0), throttled_at = clock_timestamp()
                 WHERE name = $1
                   AND (throttled_at IS NULL OR throttled_at < clock_timestamp() - interval '1 second')",
            )
            .bind(&this.name)
            .bind(MIN_FACTOR)
            .bind(DECREASE_FACTOR)
            .execute(&this.pool)
            .await;
            match result {
                Ok(done) if done.rows_affected() > 0 => emit(WriteRateLowered),
                Ok(_) => {}
                Err(error) => emit(WriteRateNotLowered { error: &error }),
            }
        });
    }
}
