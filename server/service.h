// The axeq.v1.Quantizer service (service.cc): a thin layer over JobManager and core/.
#ifndef AXEQ_SERVER_SERVICE_H_
#define AXEQ_SERVER_SERVICE_H_

#include <memory>

#include "grpcpp/impl/codegen/service_type.h"
#include "server/auth.h"
#include "server/job_manager.h"
#include "server/metrics.h"

namespace axeq::server {

std::unique_ptr<grpc::Service> MakeQuantizerService(JobManager* jobs, Metrics* metrics,
                                                    Authenticator auth, int64_t max_upload_bytes);

}  // namespace axeq::server

#endif  // AXEQ_SERVER_SERVICE_H_
