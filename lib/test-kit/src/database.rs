//! A run's own database: the worker creates and migrates it on start; the kit drops it.

use policy_reconciler::configuration::DatabaseSettings;
use sqlx::{Connection as _, Executor, PgConnection};

/// Drop the database of `settings` (closing its connections); a missing one is no error.
pub async fn drop_database(settings: &DatabaseSettings) {
    if let Ok(mut conn) = PgConnection::connect_with(&settings.without_db()).await {
        let _ = conn
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                settings.database_name
            )))
            .await;
    }
}
