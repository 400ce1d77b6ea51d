//! Bodies nobody needs any more, read to their end.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{TryStream, TryStreamExt as _};

/// Reads `body` to its end, dropping what it reads; gives up past `limit` bytes or after
/// `within`. For an answer that must wait for a body it does not use: a refused request's
/// (answering before it arrived makes clients see a reset instead of the answer), and the
/// tail of a complete upstream answer (its connection goes back to the pool only once the
/// body has ended).
pub async fn drain<S>(mut body: S, limit: usize, within: Duration)
where
    S: TryStream<Ok = Bytes> + Unpin,
{
    let _ = tokio::time::timeout(within, async {
        let mut seen = 0;
        while let Ok(Some(chunk)) = body.try_next().await {
            seen += chunk.len();
            if seen > limit {
                break;
            }
        }
    })
    .await;
}
