//! gRPC tooling on the admin listener, end to end through the real `ingress`
//! (issue 14, item 4): server reflection lists the services and hands out the
//! proto's descriptors (what `grpcurl list` and `grpcurl describe` use) to a
//! token holder only, and the standard health service answers without a token,
//! `SERVING` while the ingress runs and `NOT_SERVING` when it stops.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use prost::Message;
use support::binary::{Ingress, TOKEN};
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::{v1, v1alpha};

async fn channel(ingress: &Ingress) -> Channel {
    Channel::from_shared(format!("http://{}", ingress.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// One reflection v1 request, as `grpcurl` makes it, and its answer.
async fn reflect(
    channel: &Channel,
    token: Option<&str>,
    request: v1::server_reflection_request::MessageRequest,
) -> Result<v1::server_reflection_response::MessageResponse, tonic::Status> {
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let requests = futures_util::stream::iter(vec![v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    }]);
    let mut answers = client
        .server_reflection_info(with_token(requests, token))
        .await?
        .into_inner();
    let answer = tokio::time::timeout(Duration::from_secs(10), answers.message())
        .await
        .expect("a reflection answer within 10 s")?
        .expect("a reflection answer");
    Ok(answer.message_response.expect("a message in the answer"))
}

/// The services reflection v1 lists.
async fn listed_v1(channel: &Channel) -> BTreeSet<String> {
    let request = v1::server_reflection_request::MessageRequest::ListServices(String::new());
    match reflect(channel, Some(TOKEN), request).await.unwrap() {
        v1::server_reflection_response::MessageResponse::ListServicesResponse(list) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("not a service list: {other:?}"),
    }
}

/// The services reflection v1alpha lists (older `grpcurl` asks this one).
async fn listed_v1alpha(
    channel: &Channel,
    token: Option<&str>,
) -> Result<BTreeSet<String>, tonic::Status> {
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let requests = futures_util::stream::iter(vec![v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    }]);
    let mut answers = client
        .server_reflection_info(with_token(requests, token))
        .await?
        .into_inner();
    let answer = answers.message().await?.expect("a reflection answer");
    match answer.message_response {
        Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => panic!("not a service list: {other:?}"),
    }
}

async fn health(channel: &Channel, service: &str) -> Result<i32, tonic::Status> {
    let mut client = HealthClient::new(channel.clone());
    let request = HealthCheckRequest {
        service: service.to_string(),
    };
    Ok(client
        .check(with_token(request, None))
        .await?
        .into_inner()
        .status)
}

fn names(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| name.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_and_describes_the_admin_api_to_token_holders_only() {
    let dir = tempfile::tempdir().unwrap();
    let ingress = Ingress::start(dir.path(), "");
    let channel = channel(&ingress).await;

    // No token, or a wrong one: refused like the Admin service, in both versions.
    let list = v1::server_reflection_request::MessageRequest::ListServices(String::new());
    let refused = reflect(&channel, None, list.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("missing bearer token"),
        "{refused:?}"
    );
    let refused = reflect(&channel, Some("not-the-token"), list)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let refused = listed_v1alpha(&channel, None).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // `grpcurl list`: exactly what this listener serves; no Replication on a
    // node that serves no replicas.
    let expected = names(&[
        "ingress.v1.Admin",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]);
    assert_eq!(listed_v1(&channel).await, expected);
    assert_eq!(
        listed_v1alpha(&channel, Some(TOKEN)).await.unwrap(),
        expected
    );

    // `grpcurl describe ingress.v1.Admin`: the proto's file, with its comments.
    let request = v1::server_reflection_request::MessageRequest::FileContainingSymbol(
        "ingress.v1.Admin".into(),
    );
    let files = match reflect(&channel, Some(TOKEN), request).await.unwrap() {
        v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files) => {
            files.file_descriptor_proto
        }
        other => panic!("not a file descriptor: {other:?}"),
    };
    let file = prost_types::FileDescriptorProto::decode(files[0].as_slice()).unwrap();
    assert_eq!(file.name(), "ingress.proto");
    assert_eq!(file.package(), "ingress.v1");
    let admin = file
        .service
        .iter()
        .find(|service| service.name() == "Admin")
        .expect("the Admin service");
    let deploy = admin
        .method
        .iter()
        .find(|method| method.name() == "Deploy")
        .expect("Admin.Deploy");
    assert_eq!(deploy.input_type(), ".ingress.v1.DeployRequest");
    assert!(
        file.source_code_info
            .as_ref()
            .is_some_and(|info| info.location.iter().any(|l| l.leading_comments.is_some())),
        "the descriptor carries the proto's comments"
    );
    // A message type resolves to the same file (`grpcurl describe ingress.v1.DeployRequest`).
    let request = v1::server_reflection_request::MessageRequest::FileContainingSymbol(
        "ingress.v1.DeployRequest".into(),
    );
    assert!(matches!(
        reflect(&channel, Some(TOKEN), request).await.unwrap(),
        v1::server_reflection_response::MessageResponse::FileDescriptorResponse(_)
    ));
    // The health service's descriptor is there too (`grpcurl describe grpc.health.v1.Health`).
    let request = v1::server_reflection_request::MessageRequest::FileContainingSymbol(
        "grpc.health.v1.Health".into(),
    );
    assert!(matches!(
        reflect(&channel, Some(TOKEN), request).await.unwrap(),
        v1::server_reflection_response::MessageResponse::FileDescriptorResponse(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_without_a_token_and_turns_not_serving_on_stop() {
    let dir = tempfile::tempdir().unwrap();
    let mut ingress = Ingress::start(dir.path(), "");
    let channel = channel(&ingress).await;

    assert_eq!(
        health(&channel, "").await.unwrap(),
        ServingStatus::Serving as i32
    );
    assert_eq!(
        health(&channel, "ingress.v1.Admin").await.unwrap(),
        ServingStatus::Serving as i32
    );
    for unknown in ["ingress.v1.Replication", "nope.Nothing"] {
        let status = health(&channel, unknown).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{unknown}: {status:?}");
    }

    // A Watch (no token) sees SERVING, then NOT_SERVING when the ingress stops,
    // then the stream ends: it does not hold up the gRPC drain.
    let mut client = HealthClient::new(channel.clone());
    let request = HealthCheckRequest {
        service: "ingress.v1.Admin".into(),
    };
    let mut statuses = client
        .watch(with_token(request, None))
        .await
        .unwrap()
        .into_inner();
    let first = statuses.message().await.unwrap().expect("a status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let stopping = tokio::task::spawn_blocking(move || {
        let status = ingress.terminate();
        (ingress, status)
    });
    let next = tokio::time::timeout(Duration::from_secs(10), statuses.message())
        .await
        .expect("a status within 10 s of SIGTERM")
        .unwrap()
        .expect("NOT_SERVING before the stream ends");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    let end = tokio::time::timeout(Duration::from_secs(10), statuses.message())
        .await
        .expect("the stream ends within 10 s of SIGTERM");
    assert!(matches!(end, Ok(None)), "{end:?}");
    let (ingress, status) = stopping.await.unwrap();
    assert!(status.success(), "{status}:\n{}", ingress.log_text());
    assert!(
        !ingress.log_text().contains("gRPC calls still open"),
        "{}",
        ingress.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_node_lists_and_reports_the_replication_service() {
    let dir = tempfile::tempdir().unwrap();
    let ingress = Ingress::start(dir.path(), "[node]\nrole = \"control\"\n");
    let channel = channel(&ingress).await;

    let listed = listed_v1(&channel).await;
    assert!(listed.contains("ingress.v1.Replication"), "{listed:?}");
    assert!(listed.contains("ingress.v1.Admin"), "{listed:?}");
    assert_eq!(
        health(&channel, "ingress.v1.Replication").await.unwrap(),
        ServingStatus::Serving as i32
    );
}
