//! Finding the tenant user an address names.
//!
//! The portal identifies users by email address, which for many users is not their user
//! principal name: renamed users, aliases, guests whose UPN holds `#EXT#`
//! (`tenant.md`, "Users are found by email"). An address is resolved once, in this order:
//!
//! 1. `GET /users/{address}`: the address is the user principal name;
//! 2. `$filter=mail eq '…'`;
//! 3. `$filter=proxyAddresses/any(p:p eq 'smtp:…')`: an alias.
//!
//! The first step that finds anyone decides: one user is the answer, several are
//! `user_ambiguous`, none at all is `user_not_found` (its detail says how the address was
//! searched). The user's object id is remembered in PostgreSQL (`store::users`), shared by
//! every replica, and later reads go by id: one read, and it survives a rename. A remembered id
//! the tenant no longer knows is forgotten and the address searched again.
use sqlx::PgPool;
use uuid::Uuid;

use super::EngineError;
use crate::store::users;
use crate::tenant::{MatchedBy, Tenant, TenantError, UserLicenceState, UserRef};

/// Reads the users `addresses` name (see the module docs); one result per address, in order.
pub async fn read_users(
    pool: &PgPool,
    tenant: &dyn Tenant,
    addresses: &[String],
) -> Result<Vec<Result<UserLicenceState, TenantError>>, EngineError> {
    let keys: Vec<String> = addresses.iter().map(|a| a.to_lowercase()).collect();
    let known = users::remembered(pool, &keys).await?;
    let refs: Vec<UserRef> = keys
        .iter()
        .zip(addresses)
        .map(|(key, address)| match known.get(key) {
            Some(id) => UserRef::Id(*id),
            None => UserRef::Upn(address.clone()),
        })
        .collect();
    let mut states = tenant.get_users(&refs).await;
    let mut found: Vec<(String, Uuid, &'static str)> = Vec::new();

    // A remembered id the tenant does not know: forget it, and look for the address again.
    let mut by_upn = Vec::new();
    for (i, state) in states.iter().enumerate() {
        match (&refs[i], state) {
            (UserRef::Id(id), Err(TenantError::UserNotFound(_))) => {
                users::forget(pool, &keys[i], *id).await?;
                by_upn.push(i);
            }
            (UserRef::Upn(_), Ok(user)) => {
                found.push((
                    keys[i].clone(),
                    user.id,
                    MatchedBy::UserPrincipalName.as_str(),
                ));
            }
            _ => {}
        }
    }
    if !by_upn.is_empty() {
        let upns: Vec<UserRef> = by_upn
            .iter()
            .map(|&i| UserRef::Upn(addresses[i].clone()))
            .collect();
        for (&i, state) in by_upn.iter().zip(tenant.get_users(&upns).await) {
            if let Ok(user) = &state {
                found.push((
                    keys[i].clone(),
                    user.id,
                    MatchedBy::UserPrincipalName.as_str(),
                ));
            }
            states[i] = state;
        }
    }

    // Not a user principal name: search by mail, then by proxy address.
    let search: Vec<usize> = (0..addresses.len())
        .filter(|&i| matches!(states[i], Err(TenantError::UserNotFound(_))))
        .collect();
    if !search.is_empty() {
        let wanted: Vec<String> = search.iter().map(|&i| addresses[i].clone()).collect();
        let answers = tenant.find_users_by_address(&wanted).await;
        for (&i, answer) in search.iter().zip(answers) {
            states[i] = match answer {
                Err(error) => Err(error),
                Ok(mut m) => match m.users.len() {
                    0 => Err(TenantError::UserNotFound(format!(
                        "no user has {} as user principal name, mail or proxy address \
                         (searched GET /users/{{address}}, then $filter mail eq, then \
                         proxyAddresses/any)",
                        addresses[i]
                    ))),
                    1 => {
                        let user = m.users.remove(0);
                        found.push((keys[i].clone(), user.id, m.by.as_str()));
                        Ok(user)
                    }
                    n => Err(TenantError::UserAmbiguous(format!(
                        "{} matches {n} users by {}: {}",
                        addresses[i],
                        m.by.as_str(),
                        m.users
                            .iter()
                            .map(|u| u.user_principal_name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))),
                },
            };
        }
    }
    // Only what is new or changed is written.
    found.retain(|(key, id, _)| known.get(key) != Some(id));
    users::remember(pool, &found).await?;
    Ok(states)
}
