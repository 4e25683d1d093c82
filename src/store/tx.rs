//! Write transactions that can never outlive an error.
//!
//! sqlx's `Transaction` keeps its own count of open transactions per
//! connection. When SQLite rolls a transaction back by itself (it does on
//! `SQLITE_FULL` and I/O errors) or a `COMMIT` fails, that count and the
//! database disagree: the pooled connection comes back with a transaction
//! still open (holding SQLite's write lock), or the next `begin` becomes a
//! `SAVEPOINT` inside a transaction that is later rolled back, so a
//! "commit" that returned Ok stored nothing. This guard owns the connection
//! instead: `BEGIN` and `COMMIT` are plain statements, and a transaction that
//! did not commit (any error, or a future dropped half-way) takes its
//! connection out of the pool, which closes it and so rolls it back. A
//! connection is only ever reused after a successful `COMMIT`.

use std::ops::{Deref, DerefMut};

use sqlx::pool::PoolConnection;
use sqlx::{Database, Executor, Pool};

pub(crate) struct Tx<DB: Database> {
    conn: PoolConnection<DB>,
    open: bool,
}

/// The methods, written once and stamped out per backend (a generic
/// `Executor` bound defeats the `Send` inference the spawned tasks need).
macro_rules! tx_methods {
    ($db:ty) => {
        impl Tx<$db> {
            /// Takes a connection from `pool` and runs `begin` on it (`BEGIN`,
            /// `BEGIN IMMEDIATE`, or `BEGIN` and more statements in the same
            /// round trip).
            pub async fn begin(pool: &Pool<$db>, begin: &'static str) -> Result<Self, sqlx::Error> {
                let conn = pool.acquire().await?;
                let mut tx = Tx { conn, open: true };
                (&mut *tx.conn).execute(begin).await?;
                Ok(tx)
            }

            /// Like [`Tx::begin`], and returns the first row the statements
            /// produce (e.g. the transaction's id).
            #[allow(dead_code)] // Postgres only
            pub async fn begin_returning(
                pool: &Pool<$db>,
                begin: &'static str,
            ) -> Result<(Self, <$db as Database>::Row), sqlx::Error> {
                let conn = pool.acquire().await?;
                let mut tx = Tx { conn, open: true };
                let row = (&mut *tx.conn).fetch_one(begin).await?;
                Ok((tx, row))
            }

            /// Commits. On error the transaction did not commit (SQLite) or
            /// its outcome is unknown (Postgres, when the connection broke);
            /// either way the connection is discarded.
            pub async fn commit(mut self) -> Result<(), sqlx::Error> {
                (&mut *self.conn).execute("COMMIT").await?;
                self.open = false;
                Ok(())
            }
        }
    };
}
tx_methods!(sqlx::Postgres);
tx_methods!(sqlx::Sqlite);

pub(crate) type PgTx = Tx<sqlx::Postgres>;
pub(crate) type SqliteTx = Tx<sqlx::Sqlite>;

impl<DB: Database> Deref for Tx<DB> {
    type Target = DB::Connection;
    fn deref(&self) -> &DB::Connection {
        &self.conn
    }
}

impl<DB: Database> DerefMut for Tx<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.conn
    }
}

impl<DB: Database> Drop for Tx<DB> {
    fn drop(&mut self) {
        if self.open {
            // Closing the connection rolls back whatever it still holds.
            self.conn.close_on_drop();
        }
    }
}
