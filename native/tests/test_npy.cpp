// The npy 1.0 header: written as numpy writes it, parsed strictly.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

#include "npy.hpp"

namespace {

ctrt::npy::Header parse(const std::string& bytes) {
  return ctrt::npy::parse_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

}  // namespace

TEST(Npy, HeadersAre64ByteAlignedAndReadBack) {
  for (const auto& shape : std::vector<std::vector<int64_t>>{{}, {256}, {2, 16, 32}}) {
    const std::string header = ctrt::npy::encode_header("<f4", shape);
    EXPECT_EQ(header.size() % 64, 0u);
    const auto parsed = parse(header);
    EXPECT_EQ(parsed.descr, "<f4");
    EXPECT_EQ(parsed.shape, shape);
    EXPECT_EQ(parsed.header_bytes, header.size());
  }
}

TEST(Npy, NumpysOwnHeaderParses) {
  // np.save of np.zeros((2, 3), np.int32) with numpy 2: the growth-axis padding included
  std::string dict = "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }";
  dict.append(118 - dict.size() - 1, ' ');
  dict += '\n';
  const std::string header = std::string("\x93NUMPY\x01\x00", 8) + char(dict.size()) + char(0) + dict;
  const auto parsed = parse(header);
  EXPECT_EQ(parsed.descr, "<i4");
  EXPECT_EQ(parsed.shape, (std::vector<int64_t>{2, 3}));
}

TEST(Npy, DamagedHeadersAreRefused) {
  const std::string good = ctrt::npy::encode_header("<f4", {4});
  std::string fortran = good;
  fortran.replace(fortran.find("False"), 5, "True ");
  std::string version = good;
  version[6] = 2;
  std::string truncated = good.substr(0, 20);
  for (const auto& bad : {fortran, version, truncated, std::string("PK\x03\x04 not npy at all")}) {
    EXPECT_THROW(parse(bad), std::runtime_error);
  }
}
