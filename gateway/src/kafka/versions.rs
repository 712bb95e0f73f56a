//! The APIs and versions sluice serves, ApiVersions, and the dispatch of a
//! decoded request header to its handler. Only what is implemented is
//! advertised.

use super::auth::Access;
use super::{configs, fetch, group_api, metadata, produce, Broker};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};
use kafka_protocol::ResponseError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// (API, lowest version, highest version) served.
pub(super) const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
];

/// The versions of `key` sluice serves; the SASL APIs only when `sasl`
/// (`kafka.sasl` is set).
pub(super) fn range(key: ApiKey, sasl: bool) -> Option<(i16, i16)> {
    served(sasl).find(|(k, _, _)| *k == key).map(|&(_, lo, hi)| (lo, hi))
}

fn served(sasl: bool) -> impl Iterator<Item = &'static (ApiKey, i16, i16)> {
    SUPPORTED
        .iter()
        .filter(move |(k, _, _)| sasl || !matches!(k, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate))
}

/// A response still being produced; `None` when the request gets no
/// answer (acks=0 produce).
pub(super) type Reply = Pin<Box<dyn Future<Output = anyhow::Result<Option<BytesMut>>> + Send>>;

/// Encodes a response frame: length, header, body.
pub(super) fn frame<R: Encodable + HeaderVersion>(
    correlation_id: i32,
    version: i16,
    body: &R,
) -> anyhow::Result<BytesMut> {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, R::header_version(version))?;
    body.encode(&mut buf, version)?;
    let len = i32::try_from(buf.len() - 4)?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf)
}

fn ready<R: Encodable + HeaderVersion + Send + 'static>(corr: i32, version: i16, body: R) -> Reply {
    Box::pin(async move { frame(corr, version, &body).map(Some) })
}

/// The ApiVersions response listing [`SUPPORTED`] (the SASL APIs only
/// when `sasl`).
fn api_versions(error: i16, sasl: bool) -> ApiVersionsResponse {
    let api_keys = served(sasl)
        .map(|&(k, lo, hi)| {
            ApiVersion::default().with_api_key(k as i16).with_min_version(lo).with_max_version(hi)
        })
        .collect();
    ApiVersionsResponse::default().with_error_code(error).with_api_keys(api_keys)
}

/// The answer to an ApiVersions request of a version newer than sluice
/// serves: UNSUPPORTED_VERSION with a version 0 body (so any client can
/// read it) and the versions it can use instead.
pub(super) fn api_versions_too_new(correlation_id: i32, sasl: bool) -> anyhow::Result<BytesMut> {
    frame(correlation_id, 0, &api_versions(ResponseError::UnsupportedVersion.code(), sasl))
}

fn decode<T: Decodable>(body: &mut Bytes, version: i16) -> anyhow::Result<T> {
    T::decode(body, version)
}

/// Decodes the request body and starts its handler. Work that must keep
/// the connection's order (appending produced records) happens before
/// this returns; the rest runs in the returned future.
pub(super) async fn dispatch(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    key: ApiKey,
    body: &mut Bytes,
    access: Arc<Access>,
) -> anyhow::Result<Reply> {
    let v = header.request_api_version;
    let corr = header.correlation_id;
    let b = broker.clone();
    Ok(match key {
        ApiKey::ApiVersions => {
            let _: ApiVersionsRequest = decode(body, v)?;
            ready(corr, v, api_versions(0, broker.accounts.is_some()))
        }
        ApiKey::Metadata => ready(corr, v, metadata::metadata(broker, decode(body, v)?, v, &access)?),
        ApiKey::FindCoordinator => ready(corr, v, metadata::find_coordinator(broker, decode(body, v)?, v)),
        ApiKey::Produce => produce::produce(&b, decode(body, v)?, corr, v, &access).await,
        ApiKey::Fetch => {
            let req = decode(body, v)?;
            Box::pin(async move { frame(corr, v, &fetch::fetch(&b, req, v, &access).await?).map(Some) })
        }
        ApiKey::ListOffsets => ready(corr, v, fetch::list_offsets(broker, decode(body, v)?, &access)?),
        ApiKey::JoinGroup => {
            let req = decode(body, v)?;
            let client = header.client_id.as_ref().map(|c| c.to_string()).unwrap_or_default();
            Box::pin(async move { frame(corr, v, &group_api::join(&b, req, client, v).await).map(Some) })
        }
        ApiKey::SyncGroup => {
            let req = decode(body, v)?;
            Box::pin(async move { frame(corr, v, &group_api::sync(&b, req, v).await).map(Some) })
        }
        ApiKey::Heartbeat => ready(corr, v, group_api::heartbeat(broker, decode(body, v)?)),
        ApiKey::LeaveGroup => ready(corr, v, group_api::leave(broker, decode(body, v)?, v)),
        ApiKey::OffsetCommit => {
            let req = decode(body, v)?;
            Box::pin(
                async move { frame(corr, v, &group_api::offset_commit(&b, req, &access).await).map(Some) },
            )
        }
        ApiKey::OffsetFetch => ready(corr, v, group_api::offset_fetch(broker, decode(body, v)?, &access)),
        ApiKey::DescribeGroups => ready(corr, v, group_api::describe_groups(broker, decode(body, v)?)),
        ApiKey::ListGroups => ready(corr, v, group_api::list_groups(broker, decode(body, v)?, v)),
        ApiKey::CreateTopics => ready(corr, v, metadata::create_topics(broker, decode(body, v)?, v, &access)),
        ApiKey::InitProducerId => ready(corr, v, produce::init_producer_id(broker, decode(body, v)?)),
        ApiKey::DescribeConfigs => {
            ready(corr, v, configs::describe_configs(broker, decode(body, v)?, v, &access))
        }
        other => anyhow::bail!("API {other:?} is not served"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::{Message, VersionRange};

    #[test]
    fn advertised_versions_are_within_the_codec() {
        for &(key, lo, hi) in SUPPORTED {
            let codec: VersionRange = match key {
                ApiKey::Produce => ProduceRequest::VERSIONS,
                ApiKey::Fetch => FetchRequest::VERSIONS,
                ApiKey::ListOffsets => ListOffsetsRequest::VERSIONS,
                ApiKey::Metadata => MetadataRequest::VERSIONS,
                ApiKey::OffsetCommit => OffsetCommitRequest::VERSIONS,
                ApiKey::OffsetFetch => OffsetFetchRequest::VERSIONS,
                ApiKey::FindCoordinator => FindCoordinatorRequest::VERSIONS,
                ApiKey::JoinGroup => JoinGroupRequest::VERSIONS,
                ApiKey::Heartbeat => HeartbeatRequest::VERSIONS,
                ApiKey::LeaveGroup => LeaveGroupRequest::VERSIONS,
                ApiKey::SyncGroup => SyncGroupRequest::VERSIONS,
                ApiKey::ApiVersions => ApiVersionsRequest::VERSIONS,
                ApiKey::DescribeGroups => DescribeGroupsRequest::VERSIONS,
                ApiKey::ListGroups => ListGroupsRequest::VERSIONS,
                ApiKey::CreateTopics => CreateTopicsRequest::VERSIONS,
                ApiKey::InitProducerId => InitProducerIdRequest::VERSIONS,
                ApiKey::DescribeConfigs => DescribeConfigsRequest::VERSIONS,
                ApiKey::SaslHandshake => SaslHandshakeRequest::VERSIONS,
                ApiKey::SaslAuthenticate => SaslAuthenticateRequest::VERSIONS,
                other => panic!("{other:?} advertised but not checked here"),
            };
            let (clo, chi) = (codec.min, codec.max);
            assert!(lo <= hi && lo >= clo && hi <= chi, "{key:?} {lo}..={hi}");
        }
    }

    #[test]
    fn api_versions_encodes_at_every_version() {
        for v in 0..=3 {
            frame(1, v, &api_versions(0, true)).expect("encodes");
        }
        assert_eq!(api_versions(0, true).api_keys.len(), SUPPORTED.len());
        assert_eq!(api_versions(0, false).api_keys.len(), SUPPORTED.len() - 2);
        let too_new = api_versions_too_new(7, false).expect("encodes");
        // length, correlation id, error code 35.
        assert_eq!(&too_new[4..8], &7i32.to_be_bytes());
        assert_eq!(&too_new[8..10], &35i16.to_be_bytes());
    }
}
