//! `[mqtt.relay]`: which shop's topic each payment goes to on a relay
//! gateway.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::super::ConfigError;
use super::super::locate::Locator;
use super::super::name::{NonBlank, TopicId};
use super::connection::is_topic;

/// `[mqtt.relay]`: a relay gateway (in the cloud, taking a whole chain's
/// webhooks) publishes each payment on the topic of the shop that owns the
/// account it went to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// With `{shop}` where the shop's id goes, e.g. `chain/{shop}/payments`.
    pub topic: String,
    /// Account number → shop id.
    pub shops: BTreeMap<String, String>,
}

/// What stands for the shop's id in [`RelayConfig::topic`].
pub const SHOP_PLACEHOLDER: &str = "{shop}";

impl RelayConfig {
    /// The topic for a payment to `account`; None if no shop owns it.
    pub fn topic_for(&self, account: &str) -> Option<String> {
        let shop = self.shops.get(account)?;
        Some(self.topic.replace(SHOP_PLACEHOLDER, shop))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRelay {
    topic: Spanned<String>,
    #[serde(default)]
    shops: BTreeMap<Spanned<String>, Spanned<String>>,
}

pub(super) fn parse(
    loc: &Locator<'_>,
    key: &str,
    raw: Spanned<RawRelay>,
) -> Result<RelayConfig, ConfigError> {
    let span = raw.span();
    let r = raw.into_inner();
    let k = |name: &str| format!("{key}.relay.{name}");
    let topic = r.topic.get_ref();
    let filled = topic.replace(SHOP_PLACEHOLDER, "shop");
    if topic.matches(SHOP_PLACEHOLDER).count() != 1 || !is_topic(&filled, false) {
        return Err(loc.at(
            r.topic.span(),
            &k("topic"),
            "a topic with {shop} once where the shop's id goes, e.g. \"chain/{shop}/payments\"",
        ));
    }
    if r.shops.is_empty() {
        return Err(loc.at(
            span,
            &k("shops"),
            "list which shop owns each account: [mqtt.relay.shops] \"0123456789\" = \"shop-042\"",
        ));
    }
    let mut shops = BTreeMap::new();
    for (account, shop) in r.shops {
        if NonBlank::parse(account.get_ref()).is_none() {
            return Err(loc.at(account.span(), &k("shops"), "an empty account number"));
        }
        let shop = TopicId::at(
            loc,
            &shop,
            &k(&format!("shops.{}", account.get_ref())),
            "a shop id: 1-64 letters, digits, `-` or `_` (it becomes a topic level; use the shop gateway's gateway.id)",
        )?;
        shops.insert(account.into_inner(), shop.into());
    }
    Ok(RelayConfig {
        topic: topic.clone(),
        shops,
    })
}
