//! etcd's Lock service (`v3lockpb.Lock`): etcd's mutex recipe run in the server
//! ([`super::recipe`]), so a client that cannot run the recipe itself gets the same lock.
//!
//! Lock puts the caller's key `NAME/LEASE` (with its lease; a lease of 0 gets a new one of
//! [`recipe::SESSION_TTL_SECONDS`], as etcd does), then waits until every key under `NAME/`
//! created before it is gone. Before it answers it reads its own key again: a lease that
//! expired while the caller waited took the key with it, and the answer is etcd's "mutex:
//! session is expired" rather than a grant nobody holds (etcd-io/etcd#11456). The grant's key
//! and its fencing token (the key's create revision, which only grows for a name) are in the
//! answer; the token also as [`FENCING_TOKEN_METADATA`]. Unlock deletes the key.

use super::recipe::{self, Recipe, Withdraw};
use super::status;
use ballot_proto::v3lockpb as pb;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};

/// Response metadata carrying a grant's fencing token (its key's create revision) in decimal.
pub const FENCING_TOKEN_METADATA: &str = "ballot-fencing-token";

pub struct LockService {
    recipe: Recipe,
}

impl LockService {
    pub fn new(context: super::Context) -> Self {
        Self {
            recipe: Recipe::new(context),
        }
    }
}

#[tonic::async_trait]
impl pb::lock_server::Lock for LockService {
    async fn lock(
        &self,
        request: Request<pb::LockRequest>,
    ) -> Result<Response<pb::LockResponse>, Status> {
        let message = request.into_inner();
        recipe::check_name(&message.name, "LockRequest.name")?;
        let recipe = &self.recipe;
        let lease = recipe.session_lease(message.lease).await?;
        let prefix = recipe::contenders_prefix(&message.name);
        let key = recipe::contender_key(&prefix, lease);
        let owner = recipe::get_op(recipe::first_created_under(&prefix));
        let enter = recipe::txn_request(
            vec![recipe::created_at(&key, 0)],
            vec![
                recipe::put_op(&key, Default::default(), lease),
                owner.clone(),
            ],
            vec![recipe::get_op(recipe::single_key(&key)), owner],
        );
        let entered = recipe.txn(enter).await?;
        let header = entered.header.unwrap_or_default();
        // Our key's create revision: this txn's, or an earlier one's when this lease already
        // had a key under the name (etcd reuses it, so the same session re-locks at once).
        let token = if entered.succeeded {
            header.revision
        } else {
            recipe::read_in(&entered, 0)
                .first()
                .map(|kv| kv.create_revision)
                .ok_or_else(|| Status::internal("the lock's key vanished inside its txn"))?
        };
        let holder = recipe::read_in(&entered, 1)
            .first()
            .map(|kv| kv.create_revision);
        if holder.is_none() || holder == Some(token) {
            return Ok(granted(header, key, token));
        }
        // If the caller goes away while it waits, its key leaves the line.
        let withdraw = Withdraw::new(recipe.context(), key.clone(), token);
        let header = recipe.wait_deletes(&prefix, token - 1).await?;
        let still_ours = recipe.range(recipe::single_key(&key)).await?;
        if still_ours.kvs.first().map(|kv| kv.create_revision) != Some(token) {
            return Err(Status::new(Code::Unknown, recipe::SESSION_EXPIRED));
        }
        withdraw.keep();
        Ok(granted(header, key, token))
    }

    async fn unlock(
        &self,
        request: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        let key = request.into_inner().key;
        if key.is_empty() {
            // Unknown, as etcd's Lock service answers every refusal of its steps.
            return Err(Status::new(Code::Unknown, status::EMPTY_KEY));
        }
        let deleted = self.recipe.delete(key).await?;
        Ok(Response::new(pb::UnlockResponse {
            header: deleted.header,
        }))
    }
}

fn granted(
    header: ballot_proto::etcdserverpb::ResponseHeader,
    key: bytes::Bytes,
    token: i64,
) -> Response<pb::LockResponse> {
    let mut response = Response::new(pb::LockResponse {
        header: Some(header),
        key,
    });
    response
        .metadata_mut()
        .insert(FENCING_TOKEN_METADATA, MetadataValue::from(token));
    response
}
